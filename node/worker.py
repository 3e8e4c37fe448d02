"""The worker thread: the only owner and writer of the model (the Replica).

It alternates two kinds of work:

- **replay**: everything in the backlog (peers' updates the loop has logged) is applied
  in *one* fused `Replica.replay` call, however much has accumulated;
- **local step**: when the backlog is empty and production is allowed, one SPSA step;
  its update is logged and fsynced here, then handed to the loop to publish.

Replay always goes first, so a node that falls behind stops producing until it has
caught up: that is the back-pressure on own production. The loop never blocks on the
worker: it appends to the `Backlog` (a lock and a list) and posts commands into a
bounded queue with `put_nowait`; the worker answers through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable


log = logging.getLogger("onebyte.node.worker")

COMMAND_QUEUE = 16  # status requests that need the model (digest, snapshot, eval): few at a time


class Backlog:
    """Updates waiting for replay: appended by the loop, taken whole by the worker."""

    def __init__(self):
        self._items: list[tuple[bytes, int, int]] = []
        self._cond = threading.Condition()
        self.max_seen = 0

    def extend(self, updates: list[tuple[bytes, int, int]]) -> None:
        if not updates:
            return
        with self._cond:
            self._items.extend(updates)
            self.max_seen = max(self.max_seen, len(self._items))
            self._cond.notify()

    def take(self, limit: int) -> list[tuple[bytes, int, int]]:
        """Up to `limit` updates, oldest first (per origin they stay in step order)."""
        with self._cond:
            if len(self._items) <= limit:
                items, self._items = self._items, []
            else:
                items, self._items = self._items[:limit], self._items[limit:]
            return items

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class WorkerStats:
    """Written by the worker thread only; the loop reads plain ints/floats (atomic under the GIL)."""
    own_steps: int = 0            # own updates in the state (logged), including earlier runs
    steps_this_run: int = 0
    applied_own: int = 0          # own updates applied this run (local steps + restored)
    applied_replayed: int = 0     # peers' updates applied this run (replay)
    replay_calls: int = 0
    replay_seconds: float = 0.0
    step_seconds: float = 0.0
    loss_mean: float | None = None   # running mean over the last LOSS_WINDOW local steps
    last_loss: float | None = None
    last_eval: dict | None = None
    digest: str | None = None
    digest_updates: int = 0
    state: str = "starting"       # starting | preparing | producing | replaying | idle | done | failed
    error: str | None = None
    first_step_at: float | None = None   # monotonic time of this run's first own step
    last_step_at: float | None = None
    step_times: deque = field(default_factory=lambda: deque(maxlen=256))
    applied_times: deque = field(default_factory=lambda: deque(maxlen=256))  # (t, n) per replay


LOSS_WINDOW = 50
IDLE_DIGEST_S = 5.0  # status digest refreshed at most this often while idle


class Worker(threading.Thread):
    def __init__(self, *, replica, node_id: bytes, swarm_id: bytes, update_log, applied_vv: dict,
                 sample: Callable[[int], Any] | None, loss_fn, evaluator: Callable[[], dict] | None,
                 prepare: Callable[[], None] | None = None,
                 max_steps: int, min_step_interval_s: float, eval_every: int, snapshot: Callable,
                 snapshot_every: int, max_backlog: int, post: Callable[..., None], update_seed: Callable):
        super().__init__(name="onebyte-worker", daemon=True)
        self.replica = replica
        self.node_id = node_id
        self.swarm_id = swarm_id
        self.log = update_log
        self.applied_vv = dict(applied_vv)   # per origin: updates 1..n are in the weights
        self.sample = sample
        self.loss_fn = loss_fn
        self.evaluator = evaluator
        self.prepare = prepare               # run once before the first step (the trunk cache)
        self.max_steps = max_steps
        self.producing = True                # cleared by "stop_producing": replay and serve only
        self.min_interval = min_step_interval_s
        self.eval_every = eval_every
        self._snapshot = snapshot
        self.snapshot_every = snapshot_every
        self.max_backlog = max_backlog
        self.post = post                     # thread-safe: (kind, *args) back to the loop
        self.update_seed = update_seed
        self.backlog = Backlog()
        self.commands: queue.Queue = queue.Queue(maxsize=COMMAND_QUEUE)
        self.stats = WorkerStats(own_steps=applied_vv.get(node_id, 0))
        self._losses: deque = deque(maxlen=LOSS_WINDOW)
        self._halt = threading.Event()
        self._since_snapshot = 0
        self._idle_digest_at = 0.0          # monotonic time before which idle skips the digest
        self._next_step_at = 0.0
        self._dirty_digest = True

    # --- called from the loop thread ---------------------------------------------------

    def submit(self, cmd: str, *args) -> bool:
        """Queue a command; False if the queue is full (the caller answers "busy")."""
        try:
            self.commands.put_nowait((cmd, args))
        except queue.Full:
            return False
        self.backlog.wake()
        return True

    def stop(self) -> None:
        self._halt.set()
        self.backlog.wake()

    # --- the thread --------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the loop decides what to do (exit non-zero)
            log.exception("worker failed")
            self.stats.state = "failed"
            self.stats.error = f"{type(exc).__name__}: {exc}"
            self.post("failed", self.stats.error)

    def _run(self) -> None:
        if self.prepare is not None:
            self.stats.state = "preparing"
            self.prepare()
        self._refresh_digest()
        while not self._halt.is_set():
            did = self._replay_backlog()
            did |= self._run_commands()
            if self.snapshot_every and self._since_snapshot >= self.snapshot_every:
                self._write_snapshot()
            if self._halt.is_set():
                break
            wait = self._maybe_step() if not did else 0.0
            if wait is None:   # a step ran
                continue
            if wait > 0 or not did:
                # Idle: keep the status digest current, but at most every IDLE_DIGEST_S. Hashing
                # all trainable weights costs ~0.5 s on a full 135M model, and a producing node
                # is "idle" between every two steps; the `digest` command is always fresh.
                now = time.monotonic()
                if self._dirty_digest and not len(self.backlog) and now >= self._idle_digest_at:
                    self._refresh_digest()
                    self._idle_digest_at = now + IDLE_DIGEST_S
                    continue
                if self._dirty_digest:  # wake up when the digest is due
                    due = max(0.01, self._idle_digest_at - now)
                    wait = min(wait, due) if wait > 0 else due
                self.backlog.wait(wait if wait > 0 else 0.5)
        # Graceful stop: apply what is logged, so the final snapshot covers the whole log.
        self._replay_backlog()
        self._run_commands()
        self._write_snapshot()
        self.stats.state = "stopped"

    def _replay_backlog(self) -> bool:
        items = self.backlog.take(self.max_backlog)
        if not items:
            return False
        batch, vv = [], self.applied_vv
        for origin, step, q in items:
            have = vv.get(origin, 0)
            if step <= have:
                continue  # already in the weights (defence in depth; the log dedups too)
            if step != have + 1:
                raise RuntimeError(f"replay gap for {origin.hex()}: have {have}, got {step}")
            vv[origin] = step
            batch.append((self.update_seed(self.swarm_id, origin, step), q, step))
        if not batch:
            return False
        self.stats.state = "replaying"
        t0 = time.perf_counter()
        self.replica.replay(batch)
        dt = time.perf_counter() - t0
        s = self.stats
        s.replay_calls += 1
        s.replay_seconds += dt
        s.applied_replayed += len(batch)
        s.applied_times.append((time.monotonic(), len(batch)))
        self._since_snapshot += len(batch)
        self._dirty_digest = True
        log.debug("replayed %d updates in %.3fs", len(batch), dt)
        self.post("replayed", len(batch))
        return True

    def _maybe_step(self) -> float | None:
        """Run one local step if allowed: None if it ran, else seconds to wait (0: no work)."""
        if (self.sample is None or not self.producing
                or (self.max_steps and self.stats.own_steps >= self.max_steps)):
            if self.stats.state != "done":
                self.stats.state = "done" if self.sample is not None else "idle"
            return 0.0
        if len(self.backlog) > 0:
            return 0.0
        now = time.monotonic()
        if now < self._next_step_at:
            return self._next_step_at - now
        self.stats.state = "producing"
        step = self.applied_vv.get(self.node_id, 0) + 1
        seed = self.update_seed(self.swarm_id, self.node_id, step)
        batch = self.sample(step)
        t0 = time.perf_counter()
        q, loss = self.replica.local_step(self.loss_fn, batch, seed, step)
        dt = time.perf_counter() - t0
        # Durable before anyone else can learn of it: a crash now loses nothing published,
        # and a restart recomputes the same step (same batch, same seed, same q).
        self.log.append_own(self.node_id, step, int(q))
        self.applied_vv[self.node_id] = step
        s = self.stats
        s.own_steps = step
        s.steps_this_run += 1
        s.applied_own += 1
        s.step_seconds += dt
        t_done = time.monotonic()
        s.step_times.append(t_done)
        if s.first_step_at is None:
            s.first_step_at = t_done
        s.last_step_at = t_done
        s.last_loss = float(loss)
        if math.isfinite(loss):
            self._losses.append(float(loss))
            s.loss_mean = sum(self._losses) / len(self._losses)
        self._since_snapshot += 1
        self._dirty_digest = True
        self._next_step_at = time.monotonic() + self.min_interval
        self.post("own", step, int(q), float(loss))
        if self.eval_every and self.evaluator is not None and step % self.eval_every == 0:
            self._evaluate(step)
        return None

    def _evaluate(self, step: int, n_examples: int | None = None) -> None:
        t0 = time.perf_counter()
        res = self.evaluator(n_examples)
        self.stats.last_eval = {"step": step, "accuracy": res.get("accuracy"), "loss": res.get("loss"),
                                "n": res.get("n"), "seconds": round(time.perf_counter() - t0, 3)}
        log.info("eval at own step %d: accuracy %.4f loss %.4f", step, res.get("accuracy", float("nan")),
                 res.get("loss", float("nan")))

    def _refresh_digest(self) -> str:
        self.stats.digest = self.replica.digest()
        self.stats.digest_updates = sum(self.applied_vv.values())
        self._dirty_digest = False
        return self.stats.digest

    def _write_snapshot(self) -> None:
        if self._since_snapshot == 0:
            return
        digest = self._refresh_digest()
        self._snapshot(self.replica, dict(self.applied_vv), digest)
        self._since_snapshot = 0

    def _run_commands(self) -> bool:
        did = False
        while True:
            try:
                cmd, args = self.commands.get_nowait()
            except queue.Empty:
                return did
            did = True
            reply = args[-1]  # every command's last argument is its reply callback
            try:
                if cmd == "digest":
                    digest = self._refresh_digest() if self._dirty_digest else self.stats.digest
                    reply({"digest": digest, "updates": sum(self.applied_vv.values()),
                           "vv": {o.hex(): n for o, n in sorted(self.applied_vv.items())}})
                elif cmd == "snapshot":
                    digest = self._refresh_digest() if self._dirty_digest else self.stats.digest
                    reply(args[0](self.replica, dict(self.applied_vv), digest))
                elif cmd == "eval":
                    if self.evaluator is None:
                        reply({"error": "no eval data configured"})
                    else:
                        self._evaluate(self.stats.own_steps, args[0])
                        reply(dict(self.stats.last_eval))
                elif cmd == "stop_producing":
                    # Takes effect before the next local step; steps already taken stay
                    # published (the engine seals the open record after its linger).
                    self.producing = False
                    reply({"own_steps": self.stats.own_steps})
                else:
                    reply({"error": f"unknown worker command {cmd!r}"})
            except Exception as exc:
                log.exception("worker command %s failed", cmd)
                reply({"error": f"{type(exc).__name__}: {exc}"})
