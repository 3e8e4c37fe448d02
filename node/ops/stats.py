"""What `{"cmd": "status"}` answers (field reference: docs/status.md)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque

from .members import addr_text
from ..version import VERSION

RATE_WINDOW_S = 30.0


class Rate:
    """Events per second over the last RATE_WINDOW_S seconds (monotonic clock)."""

    def __init__(self, window: float = RATE_WINDOW_S):
        self.window = window
        self._events: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._events.append((now, n))
        self.total += n
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()

    def per_s(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        return sum(n for _, n in self._events) / self.window


class Rates:
    def __init__(self):
        self.own = Rate()        # own updates published
        self.received = Rate()   # peers' updates received (logged)

    def status(self, now: float, applied_per_s: float) -> dict:
        return {"own_per_s": round(self.own.per_s(now), 3), "received_per_s": round(self.received.per_s(now), 3),
                "applied_per_s": round(applied_per_s, 3), "window_s": RATE_WINDOW_S}


class Phase:
    """Where a starting daemon is. Set by the setup code (also from the thread that loads
    the model), read by the status socket: "loading model", "loading snapshot",
    "replaying log" (done of total updates), "loading data", "joining", then "ready"."""

    def __init__(self):
        self._lock = threading.Lock()
        self.name, self.done, self.total = "starting", 0, 0
        self.since = time.monotonic()

    def set(self, name: str, done: int = 0, total: int = 0) -> None:
        with self._lock:
            if name != self.name:
                self.since = time.monotonic()
            self.name, self.done, self.total = name, done, total

    def describe(self) -> str:
        with self._lock:
            part = f" {self.done} of {self.total}" if self.total else ""
            return f"{self.name}{part}, {time.monotonic() - self.since:.0f} s"

    def status(self, d) -> dict:
        """The status of a daemon that is not ready yet: who it is and how far it got."""
        with self._lock:
            phase = {"name": self.name, "done": self.done, "total": self.total,
                     "seconds": round(time.monotonic() - self.since, 1)}
        return {"phase": phase, "version": VERSION, "node_id": d.node_id.hex(),
                "swarm_id": d.genesis.swarm_id.hex(), "swarm_name": d.genesis.setting("name"),
                "pid": os.getpid(), "uptime_s": round(time.time() - d.started, 3)}


def build_status(d) -> dict:
    """A JSON-ready snapshot of the daemon `d` (called on the loop thread), composed of each
    component's own status: the worker's, the log's, the network's (engine), the rates'."""
    w = d.worker
    vv = d.update_log.updates_vv()
    logged_total = sum(vv.values())
    applied_total = sum(dict(w.applied_vv).values())   # copied: the worker thread mutates it
    now = time.monotonic()
    return {
        "phase": {"name": "ready"},
        "version": VERSION,
        "node_id": d.node_id.hex(),
        "swarm_id": d.genesis.swarm_id.hex(),
        "swarm_name": d.genesis.swarm.get("name"),
        "listen": addr_text(d.udp.local_addr) if d.udp else None,
        "metrics": f"http://{addr_text(d.metrics.address)}/metrics" if d.metrics else None,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - d.started, 3),
        **w.stats.status(),
        "max_steps": d.cfg.max_steps,
        "applied_total": applied_total,
        "restored": d.restored.status(),
        "snapshot_join": d.joined.status() if d.joined else None,
        "compaction": d.compactor.status() if d.compactor else None,
        "snapshot_service": d.snapshot_server.counters if d.snapshot_server else None,
        # logged but not yet in the weights (waiting for the fsync batch or the worker)
        "replay_backlog": max(0, logged_total - applied_total),
        "replay_backlog_max": w.backlog.max_seen,
        "backpressure": {"paused": d.paused, "pauses": d.pauses},
        # no room for the log: not producing, intake paused, held entries retried (node/storage/log.py)
        "disk_full": d.update_log.disk_full,
        "update_rate": d.rates.status(now, w.stats.applied_per_s(now, RATE_WINDOW_S)),
        "version_vector": _version_vector(vv, d.node_id),
        "trainable_weights": d.replica.n_trainable,
        "trunk_cache": d.trunk_info,
        "log": d.update_log.status(),
        # configured bootstrap peers never heard from (wrong address, firewall, down)
        "bootstrap_silent": d.peers.silent_status(),
        **_network(d.engine),
        "send_errors": d.udp.send_errors if d.udp else 0,
        "equivocations": d.equivocations,
        # peers' updates measured on our own data; flagged origins disagree with it (docs/security.md)
        "audit": w.setup.audit.status() if w.setup.audit else None,
        # this node's differential-privacy budget (docs/privacy.md); null when off
        "privacy": _privacy(d.training),
        # the steering rule: runs checked, and per origin the largest sum q * noise at one weight in
        # honest variances (a breach excludes at k2; docs/security.md)
        "steering": w.setup.steering.status() if w.setup.steering else None,
        # peers holding our version vector with other weights (invariant 7: never silent)
        "weights_diverged": d.weights_diverged,
        "last_divergence": d.last_divergence,
        # a key restarted from an empty state learns its earlier steps before producing
        "own_history": _own_history(d),
    }


def _network(engine) -> dict:
    """The protocol engine's part: peers, traffic, drops, NAT, exclusions, its counters."""
    if engine is None:
        return {"peers": [], "peers_alive": 0, "bytes_in": 0, "bytes_out": 0, "datagrams_in": 0,
                "datagrams_out": 0, "bytes_by_kind": {"in": {}, "out": {}}, "drops": {}, "drops_total": 0,
                "nat": None, "excluded_origins": {}, "counters": {}}
    counters = engine.counters   # a fresh dict each call
    drops = counters.pop("drops", {})
    peers = [{"node_id": p.node_id.hex(), "addr": addr_text(p.addr), "state": p.state,
              "incarnation": p.incarnation,
              "rtt_ms": round(p.rtt_s * 1000, 3) if p.rtt_s is not None else None,
              "version": p.version} for p in engine.peers()]
    return {
        "peers": peers,
        "peers_alive": sum(1 for p in peers if p["state"] == "alive"),
        "bytes_in": counters.get("bytes_in", 0),
        "bytes_out": counters.get("bytes_out", 0),
        "datagrams_in": counters.get("datagrams_in", 0),
        "datagrams_out": counters.get("datagrams_out", 0),
        "bytes_by_kind": counters.get("bytes_by_kind", {"in": {}, "out": {}}),
        "drops": dict(drops),
        "drops_total": sum(drops.values()),
        # our NAT kind and observed address as peers report them (protocol/nat.py)
        "nat": _plain(engine.nat_status()),
        # origins the influence budget cut off, the same on every node (docs/security.md)
        "excluded_origins": {o.hex(): {"step": step, "reason": why}
                             for o, (step, why) in sorted(engine.excluded_origins().items())},
        "counters": {k: v for k, v in counters.items() if isinstance(v, (int, float))},
    }


def _version_vector(vv: dict, own: bytes) -> dict:
    return {"origins": len(vv), "updates": sum(vv.values()), "own": vv.get(own, 0),
            "max_step": max(vv.values(), default=0), "min_step": min(vv.values(), default=0),
            "by_origin": {o.hex(): n for o, n in sorted(vv.items())}}


def _privacy(training) -> dict | None:
    """The budget's account, and how the clip bites over the recent examples (its summary keys
    are absent until the first private step)."""
    if training.privacy is None:
        return None
    out = training.privacy.status()
    if training.privatize is not None and training.privatize.clip_summary is not None:
        out.update(training.privatize.clip_summary)
    return out


def _own_history(d) -> dict | None:
    if d.engine is None:
        return None
    info = d.engine.own_history()   # settled, answers, reported_step, held_step
    info["waiting"] = not d.worker.history_known.is_set()   # production held until learned
    return info


def _plain(obj):
    """JSON-ready: tuples (addresses) become "host:port" strings or lists."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], int):
        return f"{obj[0]}:{obj[1]}" if ":" not in obj[0] else f"[{obj[0]}]:{obj[1]}"
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
