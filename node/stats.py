"""What `{"cmd": "status"}` answers (field reference: docs/status.md)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque

from .members import addr_text
from .version import VERSION

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
    """A JSON-ready snapshot of the daemon `d` (called on the loop thread)."""
    w = d.worker
    s = w.stats
    engine = d.engine
    counters = engine.counters if engine is not None else {}   # a fresh dict each call
    drops = counters.pop("drops", {})
    peers = []
    if engine is not None:
        for p in engine.peers():
            peers.append({
                "node_id": p.node_id.hex(),
                "addr": addr_text(p.addr),
                "state": p.state,
                "incarnation": p.incarnation,
                "rtt_ms": round(p.rtt_s * 1000, 3) if p.rtt_s is not None else None,
                "version": p.version,
            })
    silent = [{"peer": b.spec, "addr": addr_text(b.addr), "error": b.error,
               "silent_s": round(time.time() - b.since, 1)} for b in d.peers.silent_bootstrap()]
    applied = dict(w.applied_vv)  # copied: the worker thread mutates it
    vv = d.update_log.updates_vv()
    logged_total = sum(vv.values())
    applied_total = sum(applied.values())
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
        "worker_state": s.state,
        "worker_error": s.error,
        "peers": peers,
        "peers_alive": sum(1 for p in peers if p["state"] == "alive"),
        # configured bootstrap peers never heard from (wrong address, firewall, down)
        "bootstrap_silent": silent,
        "own_steps": s.own_steps,
        "max_steps": d.cfg.max_steps,
        "applied_own": s.applied_own,
        "applied_replayed": s.applied_replayed,
        "applied_total": applied_total,
        "restored": {"from_snapshot": d.restored.from_snapshot, "replayed_from_log": d.restored.replayed,
                     "seconds": round(d.restored.seconds, 3)},
        "snapshot_join": _joined(d),
        "compaction": d.compactor.status() if getattr(d, "compactor", None) else None,
        "snapshot_service": d.snapshot_server.counters if getattr(d, "snapshot_server", None) else None,
        # logged but not yet in the weights (waiting for the fsync batch or the worker)
        "replay_backlog": max(0, logged_total - applied_total),
        "replay_backlog_max": w.backlog.max_seen,
        "backpressure": {"paused": d.paused, "pauses": d.pauses},
        # no room for the log: not producing, intake paused, held entries retried (node/log.py)
        "disk_full": d.update_log.disk_full,
        "replay_calls": s.replay_calls,
        "replay_seconds": round(s.replay_seconds, 4),
        "update_rate": {
            "own_per_s": round(d.rates.own.per_s(now), 3),
            "received_per_s": round(d.rates.received.per_s(now), 3),
            "applied_per_s": round(_applied_rate(s, now), 3),
            "window_s": RATE_WINDOW_S,
        },
        "step_seconds_mean": round(s.step_seconds / s.steps_this_run, 5) if s.steps_this_run else None,
        "own_steps_this_run": s.steps_this_run,
        # own steps per second of wall time while producing (first to last own step of this run)
        "producing_steps_per_s": (round((s.steps_this_run - 1) / (s.last_step_at - s.first_step_at), 3)
                                  if s.steps_this_run > 1 and s.last_step_at > s.first_step_at else None),
        "loss_mean": s.loss_mean,
        "last_loss": s.last_loss,
        "last_eval": s.last_eval,
        "version_vector": {
            "origins": len(vv),
            "updates": logged_total,
            "own": vv.get(d.node_id, 0),
            "max_step": max(vv.values(), default=0),
            "min_step": min(vv.values(), default=0),
            "by_origin": {o.hex(): n for o, n in sorted(vv.items())},
        },
        "digest": s.digest,
        "digest_updates": s.digest_updates,
        "trainable_weights": d.replica.n_trainable,
        "trunk_cache": d.trunk_info,
        "log": {"entries": d.update_log.entries, "truncated_bytes": d.update_log.truncated_bytes,
                "duplicates": d.update_log.duplicates, "fsync": d.update_log.fsync_enabled,
                "held": d.update_log.held, "disk_full_events": d.update_log.disk_full_events,
                "disk_full_error": d.update_log.disk_full_error},
        "bytes_in": counters.get("bytes_in", 0),
        "bytes_out": counters.get("bytes_out", 0),
        "datagrams_in": counters.get("datagrams_in", 0),
        "datagrams_out": counters.get("datagrams_out", 0),
        "bytes_by_kind": counters.get("bytes_by_kind", {"in": {}, "out": {}}),
        "drops": dict(drops),
        "drops_total": sum(drops.values()),
        "send_errors": d.udp.send_errors if d.udp else 0,
        "equivocations": d.equivocations,
        # peers' updates measured on our own data; flagged origins disagree with it (docs/security.md)
        "audit": d.worker.setup.audit.status() if d.worker and d.worker.setup.audit else None,
        # this node's differential-privacy budget (docs/privacy.md); null when off
        "privacy": _privacy(getattr(d, "training", None)),
        # our NAT kind and observed address as peers report them (protocol/nat.py)
        "nat": _plain(engine.nat_status()) if engine is not None else None,
        # the steering rule: runs checked, and per origin the largest sum q * noise at one weight in
        # honest variances (a breach excludes at k2; docs/security.md)
        "steering": d.worker.setup.steering.status() if d.worker and d.worker.setup.steering else None,
        # origins the influence budget cut off, the same on every node (docs/security.md)
        "excluded_origins": ({o.hex(): {"step": step, "reason": why}
                              for o, (step, why) in sorted(engine.excluded_origins().items())}
                             if engine is not None else {}),
        # peers holding our version vector with other weights (invariant 7: never silent)
        "weights_diverged": d.weights_diverged,
        "last_divergence": d.last_divergence,
        # a key restarted from an empty state learns its earlier steps before producing
        "own_history": _own_history(d),
        "counters": {k: v for k, v in counters.items() if isinstance(v, (int, float))},
    }


def _privacy(training) -> dict | None:
    """The budget's account, and how the clip bites over the recent examples (its summary keys
    are absent until the first private step)."""
    if training is None or training.privacy is None:
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


def _applied_rate(s, now: float) -> float:
    n = sum(k for t, k in list(s.applied_times) if t >= now - RATE_WINDOW_S)
    n += sum(1 for t in list(s.step_times) if t >= now - RATE_WINDOW_S)
    return n / RATE_WINDOW_S


def _joined(d) -> dict | None:
    """This start's snapshot join (node/snapshot_join.py), if it joined from one."""
    j = getattr(d, "joined", None)
    if j is None:
        return None
    return {"digest": j.digest, "updates": sum(j.vv.values()), "source": j.source,
            "attested_by": j.attested_by, "seconds": round(j.seconds, 3)}


def _plain(obj):
    """JSON-ready: tuples (addresses) become "host:port" strings or lists."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], int):
        return f"{obj[0]}:{obj[1]}" if ":" not in obj[0] else f"[{obj[0]}]:{obj[1]}"
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
