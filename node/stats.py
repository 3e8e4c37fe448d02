"""What `{"cmd": "status"}` answers (field reference: docs/status.md)."""

from __future__ import annotations

import os
import time
from collections import deque

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


def _peer_state(state) -> str:
    return getattr(state, "name", str(state)).lower()


def build_status(d) -> dict:
    """A JSON-ready snapshot of the daemon `d` (called on the loop thread)."""
    w = d.worker
    s = w.stats
    engine = d.engine
    counters = dict(getattr(engine, "counters", {}) or {}) if engine is not None else {}
    drops = counters.pop("drops", None)
    if drops is None:
        drops = {k[len("drop_"):]: v for k, v in counters.items() if k.startswith("drop_")}
    peers = []
    if engine is not None:
        for p in engine.peers():
            rtt = getattr(p, "rtt_s", None)
            peers.append({
                "node_id": p.node_id.hex(),
                "addr": _fmt_addr(p.addr),
                "state": _peer_state(p.state),
                "incarnation": getattr(p, "incarnation", None),
                "rtt_ms": round(rtt * 1000, 3) if rtt is not None else None,
            })
    applied = dict(w.applied_vv)  # copied: the worker thread mutates it
    vv = d.ulog.updates_vv()
    logged_total = sum(vv.values())
    applied_total = sum(applied.values())
    now = time.monotonic()
    return {
        "node_id": d.node_id.hex(),
        "swarm_id": d.genesis.swarm_id.hex(),
        "swarm_name": d.genesis.swarm.get("name"),
        "listen": _fmt_addr(d.udp.local_addr) if d.udp else None,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - d.started, 3),
        "worker_state": s.state,
        "worker_error": s.error,
        "peers": peers,
        "peers_alive": sum(1 for p in peers if p["state"] == "alive"),
        "own_steps": s.own_steps,
        "max_steps": d.cfg.max_steps,
        "applied_own": s.applied_own,
        "applied_replayed": s.applied_replayed,
        "applied_total": applied_total,
        "restored": {"from_snapshot": d.restored.from_snapshot, "replayed_from_log": d.restored.replayed,
                     "seconds": round(d.restored.seconds, 3)},
        # logged but not yet in the weights (waiting for the fsync batch or the worker)
        "replay_backlog": max(0, logged_total - applied_total),
        "replay_backlog_max": w.backlog.max_seen,
        "backpressure": {"paused": d.paused, "pauses": d.pauses},
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
        "log": {"entries": d.ulog.entries, "truncated_bytes": d.ulog.truncated_bytes,
                "duplicates": d.ulog.duplicates, "fsync": d.ulog.fsync_enabled},
        "bytes_in": counters.get("bytes_in", 0),
        "bytes_out": counters.get("bytes_out", 0),
        "datagrams_in": counters.get("datagrams_in", 0),
        "datagrams_out": counters.get("datagrams_out", 0),
        "drops": dict(drops),
        "drops_total": sum(drops.values()),
        "send_errors": d.udp.send_errors if d.udp else 0,
        "equivocations": d.equivocations,
        "counters": {k: v for k, v in counters.items() if isinstance(v, (int, float))},
    }


def _applied_rate(s, now: float) -> float:
    n = sum(k for t, k in list(s.applied_times) if t >= now - RATE_WINDOW_S)
    n += sum(1 for t in list(s.step_times) if t >= now - RATE_WINDOW_S)
    return n / RATE_WINDOW_S


def _fmt_addr(addr) -> str | None:
    if addr is None:
        return None
    if isinstance(addr, (tuple, list)) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)
