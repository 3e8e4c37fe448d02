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

import hashlib
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import DiskFull
from .training import Training

log = logging.getLogger("onebyte.node.train.worker")

COMMAND_QUEUE = 16  # status requests that need the model (digest, snapshot, eval): few at a time


# --- loop -> worker: commands, each with the callback that answers it (called in the worker) --

@dataclass(frozen=True)
class Digest:
    reply: Callable[[dict], None]


@dataclass(frozen=True)
class Snapshot:
    write: Callable[..., dict]     # write(replica, vv, digest) -> answer
    reply: Callable[[dict], None]


@dataclass(frozen=True)
class Attest:
    """The weights digest at an earlier version vector `vv` (a joiner's snapshot to vouch
    for): `undo_for(applied_vv)` gives the updates to take back from the live weights (from
    the log), or an error answer; the worker takes them back, digests and replays them."""
    vv: dict
    undo_for: Callable[[dict], list | dict]
    reply: Callable[[dict], None]


@dataclass(frozen=True)
class Evaluate:
    examples: int | None           # None: the configured eval_examples
    reply: Callable[[dict], None]


@dataclass(frozen=True)
class StopProducing:
    reply: Callable[[dict], None]


# --- worker -> loop: what happened (posted through `WorkerSetup.post`) ----------------------

@dataclass(frozen=True)
class OwnUpdate:
    """One local step's own updates: steps step .. step + len(qs) - 1 (one per probe)."""
    step: int
    qs: tuple
    loss: float


@dataclass(frozen=True)
class Replayed:
    count: int


@dataclass(frozen=True)
class Failed:
    error: str


@dataclass(frozen=True)
class Digested:
    """A fresh weights digest and the hash of the version vector it covers (vv_hash)."""
    digest: str
    vv_hash: bytes


def vv_hash(vv: dict) -> bytes:
    """16 bytes naming a version vector: equal on two nodes iff they applied the same steps."""
    h = hashlib.blake2b(b"onebyte-vv-v1", digest_size=16)
    for origin, step in sorted(vv.items()):
        if step:
            h.update(origin + step.to_bytes(8, "little"))
    return h.digest()


@dataclass
class WorkerSetup:
    """Everything a worker is built from: its collaborators and its limits (the limits'
    defaults are the node config's, node/config.py NODE_FIELDS)."""
    replica: Any
    node_id: bytes
    swarm_id: bytes
    update_log: Any                  # node/storage/log.py UpdateLog: own steps are appended here
    applied_vv: dict                 # per origin: updates 1..n are in the weights
    training: Training               # sample/loss/eval/prepare; Training() replays only
    snapshot: Callable               # snapshot(replica, vv, digest), in this thread
    post: Callable[[Any], None]      # thread-safe: OwnUpdate/Replayed/Failed/Steered to the loop
    seeder: Any                      # model/rng.py Seeder: (origin, step, q) -> the update a replica applies
    max_steps: int
    min_step_interval_s: float
    eval_every: int
    snapshot_every: int
    max_backlog: int
    on_digest: Callable[[Any], None] | None = None   # thread-safe: each fresh Digested
    steering: Any = None             # node/train/steering.py SteeringGuard, fed with every replayed update
    audit: Any = None                # node/train/audit.py Audit: peers' updates measured on our own data


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
    state: str = "starting"       # starting | preparing | producing | replaying | idle | done | disk_full | failed
    error: str | None = None
    first_step_at: float | None = None   # monotonic time of this run's first own step
    last_step_at: float | None = None
    step_times: deque = field(default_factory=lambda: deque(maxlen=256))
    applied_times: deque = field(default_factory=lambda: deque(maxlen=256))  # (t, n) per replay

    def applied_per_s(self, now: float, window: float) -> float:
        """Updates applied (own steps and replays) per second over the last `window` seconds."""
        n = sum(k for t, k in list(self.applied_times) if t >= now - window)
        n += sum(1 for t in list(self.step_times) if t >= now - window)
        return n / window

    def status(self) -> dict:
        """The worker's part of the status (docs/status.md), read on the loop thread."""
        return {
            "worker_state": self.state,
            "worker_error": self.error,
            "own_steps": self.own_steps,
            "applied_own": self.applied_own,
            "applied_replayed": self.applied_replayed,
            "replay_calls": self.replay_calls,
            "replay_seconds": round(self.replay_seconds, 4),
            "step_seconds_mean": round(self.step_seconds / self.steps_this_run, 5) if self.steps_this_run else None,
            "own_steps_this_run": self.steps_this_run,
            # own steps per second of wall time while producing (first to last own step of this run)
            "producing_steps_per_s": (round((self.steps_this_run - 1) / (self.last_step_at - self.first_step_at), 3)
                                      if self.steps_this_run > 1 and self.last_step_at > self.first_step_at
                                      else None),
            "loss_mean": self.loss_mean,
            "last_loss": self.last_loss,
            "last_eval": self.last_eval,
            "digest": self.digest,
            "digest_updates": self.digest_updates,
        }


LOSS_WINDOW = 50
AUDIT_BATCHES = 1 << 40   # the audit's batches: sampler steps far past any own step
IDLE_DIGEST_S = 5.0  # status digest refreshed at most this often while idle
DISK_FULL_WAIT_S = 1.0  # while the disk is full: no local step, look again this often


class Worker(threading.Thread):
    def __init__(self, setup: WorkerSetup):
        super().__init__(name="onebyte-worker", daemon=True)
        self.setup = setup
        self.replica = setup.replica
        self.node_id = setup.node_id
        self.update_log = setup.update_log
        self.applied_vv = dict(setup.applied_vv)
        self.training = setup.training
        self.producing = True                # cleared by StopProducing: replay and serve only
        # Cleared by the daemon until the engine has learned this key's own earlier steps
        # (OwnHistoryLearned): producing before that could reuse a step number.
        self.history_known = threading.Event()
        self.history_known.set()
        self.post = setup.post
        self.backlog = Backlog()
        self.commands: queue.Queue = queue.Queue(maxsize=COMMAND_QUEUE)
        self.stats = WorkerStats(own_steps=self.applied_vv.get(self.node_id, 0))
        self._losses: deque = deque(maxlen=LOSS_WINDOW)
        self._halt = threading.Event()
        self._since_snapshot = 0
        self._idle_digest_at = 0.0          # monotonic time before which idle skips the digest
        self._next_step_at = 0.0
        self._dirty_digest = True
        # Equivocating origins (protocol/equivocation.py): origin -> first step never applied,
        # and exclusions the loop posted that are not taken back yet.
        self.excluded: dict[bytes, int] = {}
        self._to_exclude: list[tuple[bytes, int, list]] = []
        self._exclude_lock = threading.Lock()

    # --- called from the loop thread ---------------------------------------------------

    def submit(self, command) -> bool:
        """Queue a command; False if the queue is full (the caller answers "busy")."""
        try:
            self.commands.put_nowait(command)
        except queue.Full:
            return False
        self.backlog.wake()
        return True

    def stop(self) -> None:
        self._halt.set()
        self.backlog.wake()

    def enqueue(self, updates: list) -> None:
        """Peers' updates, logged durably, for the next replay."""
        self.backlog.extend(updates)

    def hold_production(self) -> None:
        """No own step until release_production: this key's earlier steps may still be
        coming back from peers (a step number must never be used twice)."""
        self.history_known.clear()

    def release_production(self) -> None:
        self.history_known.set()
        self.backlog.wake()

    def end_production(self) -> None:
        """Never produce again in this run (this key equivocated); replay and serve go on."""
        self.producing = False
        self.backlog.wake()

    def exclude(self, origin: bytes, step: int, qs: list) -> None:
        """origin is excluded from step on; qs are the q of its steps step.. the log held
        (some may be in the weights, the others still in the backlog)."""
        with self._exclude_lock:
            self._to_exclude.append((origin, step, list(qs)))
        self.backlog.wake()

    # --- the thread --------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the loop decides what to do (exit non-zero)
            log.exception("worker failed")
            self.stats.state = "failed"
            self.stats.error = f"{type(exc).__name__}: {exc}"
            self.post(Failed(self.stats.error))

    def _run(self) -> None:
        if self.training.prepare is not None:
            self.stats.state = "preparing"
            self.training.prepare()
        self._refresh_digest()
        while not self._halt.is_set():
            did = self._take_back()
            did |= self._replay_backlog()
            did |= self._run_commands()
            if self.setup.snapshot_every and self._since_snapshot >= self.setup.snapshot_every:
                self._write_snapshot()
            if self._halt.is_set():
                break
            did |= self._maybe_audit()
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

    def _take_back(self) -> bool:
        """Undo, exactly, the applied updates of origins excluded since the last call."""
        with self._exclude_lock:
            todo, self._to_exclude = self._to_exclude, []
        for origin, step, qs in todo:
            self.excluded[origin] = min(step, self.excluded.get(origin, step))
            have = self.applied_vv.get(origin, 0)
            if have < step:
                continue
            undo = [self.setup.seeder.update(origin, s, qs[s - step]) for s in range(step, have + 1)
                    if s - step < len(qs)]
            self.replica.undo(undo)
            self.applied_vv[origin] = step - 1
            self._since_snapshot += len(undo)
            self._dirty_digest = True
            log.warning("took back %d update(s) of origin %s from step %d on (equivocation)",
                        len(undo), origin.hex()[:16], step)
        return bool(todo)

    def _replay_backlog(self) -> bool:
        items = self.backlog.take(self.setup.max_backlog)
        if not items:
            return False
        batch, applied, vv = [], [], self.applied_vv
        for origin, step, q in items:
            have = vv.get(origin, 0)
            if step <= have or step >= self.excluded.get(origin, step + 1):
                continue  # already in the weights (the log dedups too), or excluded
            if step != have + 1:
                raise RuntimeError(f"replay gap for {origin.hex()}: have {have}, got {step}")
            vv[origin] = step
            applied.append((origin, step, q))
            batch.append(self.setup.seeder.update(origin, step, q))
        if not batch:
            return False
        self.stats.state = "replaying"
        t0 = time.perf_counter()
        self.replica.replay(batch)
        if self.setup.steering is not None:
            for hit in self.setup.steering.feed_all(applied):
                self._take_back_steered(hit)
        if self.setup.audit is not None:
            for origin, step, q in applied:
                self.setup.audit.offer(origin, step, q)
        dt = time.perf_counter() - t0
        s = self.stats
        s.replay_calls += 1
        s.replay_seconds += dt
        s.applied_replayed += len(batch)
        s.applied_times.append((time.monotonic(), len(batch)))
        self._since_snapshot += len(batch)
        self._dirty_digest = True
        log.debug("replayed %d updates in %.3fs", len(batch), dt)
        if log.isEnabledFor(logging.DEBUG):   # bench/node.py: each origin's top step applied, when
            tops = {o: s for o, s, _ in items if vv.get(o) == s}
            log.debug("trace applied %.6f %s", time.time(), " ".join(f"{o.hex()}:{s}" for o, s in tops.items()))
        self.post(Replayed(len(batch)))
        return True

    def _maybe_audit(self) -> bool:
        """Measure one peer's updates since its last audit on our own data when the audit is due
        (node/train/audit.py)."""
        audit, training = self.setup.audit, self.training
        # A private node's data is read only by its accounted steps: what an audit measures
        # would be published (status, metrics) outside the budget (docs/privacy.md).
        if audit is None or training.loss_fn is None or training.privacy is not None or not audit.due():
            return False

        # a classification task's label margin moves on every row, its cross-entropy mostly on
        # the rows the model gets wrong: the margin shows an update's sign in fewer audits
        loss_fn = getattr(training.loss_fn, "margin", training.loss_fn)

        def measure(origin: bytes, updates: list[tuple[int, int]], batch_ids: range) -> float:
            ups = [self.setup.seeder.update(origin, step, q) for step, q in updates]   # applied: held
            # batches numbered past any own step's, each measured on once
            rows = [row for k in batch_ids for row in training.sample(AUDIT_BATCHES + k)]
            return self.replica.directional(loss_fn, rows, ups, held=True)
        return audit.run(measure)

    def _take_back_steered(self, hit) -> None:
        """The steering rule excluded hit.origin from hit.step on (node/train/steering.py): its
        updates from there leave the weights, exactly, and the loop tells the engine."""
        self.replica.undo([self.setup.seeder.update(hit.origin, s, q) for s, q in enumerate(hit.qs, hit.step)])
        self.applied_vv[hit.origin] = hit.step - 1
        self.excluded[hit.origin] = min(hit.step, self.excluded.get(hit.origin, hit.step))
        self.post(hit)

    def _maybe_step(self) -> float | None:
        """Run one local step if allowed: None if it ran, else seconds to wait (0: no work)."""
        setup, training = self.setup, self.training
        if (training.sample is None or not self.producing
                or (setup.max_steps and self.stats.own_steps >= setup.max_steps)):
            if self.stats.state != "done":
                self.stats.state = "done" if training.sample is not None else "idle"
            return 0.0
        if len(self.backlog) > 0:
            return 0.0
        if not self.history_known.is_set():   # our own earlier steps are still coming back
            self.stats.state = "learning_history"
            return 0.0
        if self.update_log.disk_full:   # nothing new can be logged, so nothing is produced
            self.stats.state = "disk_full"
            return DISK_FULL_WAIT_S
        now = time.monotonic()
        if now < self._next_step_at:
            return self._next_step_at - now
        step = self.applied_vv.get(self.node_id, 0) + 1
        if training.privacy is not None:   # every own step of this key counts (the log keeps them)
            if not training.privacy.allows(step):
                self.producing = False
                self.stats.state = "done"
                return 0.0
        self.stats.state = "producing"
        # One step measures hyper.probes probes, each its own update on consecutive own steps.
        probes = setup.seeder.probes(self.node_id, step, self.replica.hyper.probes)
        batch = training.sample(step)
        t0 = time.perf_counter()
        qs, loss = self.replica.local_step(training.loss_fn, batch, probes, privatize=training.privatize)
        dt = time.perf_counter() - t0
        # Durable before anyone else can learn of it: a crash now loses nothing published,
        # and a restart recomputes the same step (same batch, same seeds, same q).
        try:
            self.update_log.append_own(self.node_id, step, [int(q) for q in qs])
        except DiskFull:
            # exact on the grid: the weights are bit for bit as before the step
            self.replica.undo([setup.seeder.update(self.node_id, s, int(q)) for s, q in enumerate(qs, step)])
            self.stats.state = "disk_full"
            return DISK_FULL_WAIT_S
        last = step + len(qs) - 1
        self.applied_vv[self.node_id] = last
        s = self.stats
        s.own_steps = last
        s.steps_this_run += 1
        s.applied_own += len(qs)
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
        self._since_snapshot += len(qs)
        self._dirty_digest = True
        self._next_step_at = time.monotonic() + setup.min_step_interval_s * len(qs)
        self.post(OwnUpdate(step, tuple(int(q) for q in qs), float(loss)))
        if log.isEnabledFor(logging.DEBUG):   # bench/node.py reads these for staleness
            log.debug("trace own %d %.6f", last, time.time())
        if setup.eval_every and training.evaluator is not None and \
                last // setup.eval_every > (step - 1) // setup.eval_every:   # crossed a multiple
            self._evaluate(last)
        return None

    def _evaluate(self, step: int, n_examples: int | None = None) -> None:
        t0 = time.perf_counter()
        res = self.training.evaluator(n_examples)
        self.stats.last_eval = {"step": step, "accuracy": res.get("accuracy"), "loss": res.get("loss"),
                                "n": res.get("n"), "seconds": round(time.perf_counter() - t0, 3)}
        log.info("eval at own step %d: accuracy %.4f loss %.4f", step, res.get("accuracy", float("nan")),
                 res.get("loss", float("nan")))

    def _refresh_digest(self) -> str:
        self.stats.digest = self.replica.digest()
        self.stats.digest_updates = sum(self.applied_vv.values())
        self._dirty_digest = False
        if self.setup.on_digest is not None:   # peers with the same vv compare digests
            self.setup.on_digest(Digested(self.stats.digest, vv_hash(self.applied_vv)))
        return self.stats.digest

    def _write_snapshot(self) -> None:
        if self._since_snapshot == 0 or self.update_log.disk_full:
            return   # (disk full: the log is enough to restart)
        digest = self._refresh_digest()
        try:
            self.setup.snapshot(self.replica, dict(self.applied_vv), digest)
        except DiskFull as exc:
            self.update_log.mark_disk_full(str(exc))
            return
        self._since_snapshot = 0

    def _run_commands(self) -> bool:
        did = False
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return did
            did = True
            try:
                command.reply(self._answer(command))
            except Exception as exc:
                log.exception("worker command %s failed", type(command).__name__)
                command.reply({"error": f"{type(exc).__name__}: {exc}"})

    def _answer(self, command) -> dict:
        match command:
            case Digest():
                return {"digest": self._fresh_digest(), "updates": sum(self.applied_vv.values()),
                        "vv": {o.hex(): n for o, n in sorted(self.applied_vv.items())}}
            case Snapshot(write=write):
                digest = self._fresh_digest()
                return write(self.replica, dict(self.applied_vv), digest)
            case Attest(vv=vv, undo_for=undo_for):
                return self._attest(vv, undo_for)
            case Evaluate(examples=n):
                if self.training.evaluator is None:
                    return {"error": "no eval data configured"}
                self._evaluate(self.stats.own_steps, n)
                return dict(self.stats.last_eval)
            case StopProducing():
                # Takes effect before the next local step; steps already taken stay
                # published (the engine seals the open record after its linger).
                self.producing = False
                return {"own_steps": self.stats.own_steps}
        return {"error": f"unknown worker command {command!r}"}

    def _attest(self, vv: dict, undo_for) -> dict:
        digest = self._fresh_digest()
        if any(n > self.applied_vv.get(o, 0) for o, n in vv.items()):
            return {"ok": False, "error": "that version vector is ahead of this node"}
        diff = undo_for(dict(self.applied_vv))
        if isinstance(diff, dict):
            return diff   # an error answer: too far behind, or compacted past vv
        if not diff:
            return {"ok": True, "digest": digest, "from": "weights"}
        self.replica.undo(diff)       # exact on the grid: the weights at vv
        try:
            at_vv = self.replica.digest()
        finally:
            self.replica.replay(diff)
        if self.replica.digest() != digest:   # cannot happen on the grid; never serve a wrong state
            raise RuntimeError("attest: weights not restored bit for bit")
        return {"ok": True, "digest": at_vv, "from": "undo"}

    def _fresh_digest(self) -> str:
        return self._refresh_digest() if self._dirty_digest else self.stats.digest

