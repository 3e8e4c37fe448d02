"""The state directory and the replica built from it (daemon and offline tools share this).

    <state_dir>/
        lock               flock()ed by the running daemon
        genesis.toml       copy of the genesis of the swarm this state belongs to
        updates.log        the durable update log (node/storage/log.py)
        snapshots/         snapshot.json + weights-*.safetensors (node/storage/snapshot.py)
        exports/           snapshots requested through the status socket

Restoring a replica: base model -> Replica -> latest snapshot (if any) -> one fused
replay of every logged update the snapshot does not cover.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DiskFull, StateError, UserError
from ..genesis import Genesis, load_genesis
from .log import UpdateLog
from .durable import atomic_write_bytes, fsync_path, is_no_space
from .snapshot import read_snapshot
from ..train.steering import SteeringGuard

log = logging.getLogger("onebyte.node.storage.state")

REPLAY_CHUNK = 1 << 20  # updates per fused replay call at restore (bounds the seed arrays)


class StateDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.log_path = self.path / "updates.log"
        self.snapshots = self.path / "snapshots"
        self.exports = self.path / "exports"
        self.genesis_copy = self.path / "genesis.toml"
        self._lock_fd: int | None = None

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"[node] state_dir {self.path}: cannot create: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise ConfigError(f"[node] state_dir {self.path} is not writable by this user")

    def lock(self) -> None:
        """One daemon per state directory: a second one would interleave the log."""
        try:
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._no_space(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise StateError(f"state_dir {self.path} is in use by another onebyte daemon"
                             f"{f' (pid {other})' if other else ''}; stop it or use another state_dir") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            os.close(fd)
            raise self._no_space(exc) from None
        self._lock_fd = fd

    def _no_space(self, exc: OSError) -> OSError | DiskFull:
        """Starting on a full disk is a one-line error, not a traceback."""
        if not is_no_space(exc):
            return exc
        return DiskFull(f"state_dir {self.path}: no space left on its device; free some space "
                        "(or move state_dir) and start again")

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def check_genesis(self, genesis: Genesis, write: bool) -> None:
        """The state belongs to one swarm: refuse a different genesis (a different swarm id)."""
        if self.genesis_copy.exists():
            try:
                old = load_genesis(self.genesis_copy)
            except UserError as exc:
                raise StateError(f"state_dir {self.path}: its genesis copy is unreadable ({exc})") from None
            if old.swarm_id != genesis.swarm_id:
                raise StateError(f"wrong genesis: state_dir {self.path} belongs to swarm "
                                 f"{old.swarm_id.hex()[:16]}…, but {genesis.path} defines swarm "
                                 f"{genesis.swarm_id.hex()[:16]}…; use the swarm's genesis or a fresh state_dir")
        elif write:
            atomic_write_bytes(self.genesis_copy, genesis.to_toml().encode())

    def import_snapshot(self, weights: Path) -> None:
        """Seed a fresh state dir with a snapshot from elsewhere (`initial_snapshot`): the
        weights file plus the `<weights>.json` that `{"cmd": "snapshot"}` writes beside it."""
        import json
        import shutil

        from .snapshot import POINTER
        if (self.snapshots / POINTER).exists() or (self.log_path.exists() and self.log_path.stat().st_size > 16):
            return  # not a fresh node: its own state wins
        meta_path = Path(str(weights) + ".json")
        try:
            meta = json.loads(meta_path.read_text())
            vv, digest = meta["vv"], meta["digest"]
        except FileNotFoundError:
            raise ConfigError(f"[node] initial_snapshot: {meta_path} not found (written beside the "
                              "weights by the status socket's snapshot command)") from None
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"[node] initial_snapshot: {meta_path} is malformed ({exc})") from None
        if not weights.is_file():
            raise ConfigError(f"[node] initial_snapshot: {weights} not found")
        name = f"weights-imported-{digest[:16]}.safetensors"
        tmp = self.snapshots / f".{name}.tmp"
        try:
            self.snapshots.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(weights, tmp)
            fsync_path(tmp)
            os.replace(tmp, self.snapshots / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._no_space(exc) from None
        pointer = {"format": 1, "weights": name, "vv": vv, "digest": digest,
                   "updates": sum(vv.values()), "created": time.time(), "imported_from": str(weights)}
        atomic_write_bytes(self.snapshots / POINTER, json.dumps(pointer, indent=1).encode())
        fsync_path(self.snapshots)
        log.info("state dir seeded from snapshot %s (%d updates)", weights, pointer["updates"])

    def install_snapshot(self, weights: Path, vv: dict[bytes, int], digest: str, ulog: UpdateLog) -> None:
        """Make a verified snapshot (a file in snapshots/, from a snapshot join) this node's
        state: it becomes the committed snapshot, then the log is compacted to its vv (the
        log keeps what lies beyond, e.g. own steps not yet in the snapshot). A crash between
        the two leaves a snapshot ahead of the log, which restore accepts."""
        import json

        from .snapshot import POINTER
        name = f"weights-joined-{digest[:16]}-{sum(vv.values())}.safetensors"
        os.replace(weights, self.snapshots / name)
        fsync_path(self.snapshots)
        pointer = {"format": 1, "weights": name, "vv": {o.hex(): n for o, n in sorted(vv.items())},
                   "digest": digest, "updates": sum(vv.values()), "created": time.time(), "joined": True}
        atomic_write_bytes(self.snapshots / POINTER, json.dumps(pointer, indent=1).encode())
        for old in self.snapshots.glob("weights-*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)
        ulog.compact(vv)

    def next_generation(self) -> int:
        """A number that grows with every start of this node (the engine's session epoch):
        max(previous + 1, wall-clock seconds), persisted before use so a clock step back
        cannot make a restart reuse an old generation."""
        path = self.path / "generation"
        try:
            prev = int(path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            prev = 0
        gen = max(prev + 1, int(time.time()))
        atomic_write_bytes(path, f"{gen}\n".encode())
        return gen

    def open_log(self, fsync: bool = True, readonly: bool = False) -> UpdateLog:
        if readonly and not self.log_path.exists():
            raise StateError(f"state_dir {self.path} has no update log (has this node ever run?)")
        return UpdateLog(self.log_path, fsync=fsync, readonly=readonly)


@dataclass
class Restored:
    replica: object
    tokenizer: object
    applied_vv: dict[bytes, int]
    from_snapshot: int   # updates covered by the snapshot
    replayed: int        # updates replayed from the log at restore
    seconds: float
    steering: object = None       # the SteeringGuard (node/train/steering.py), fed so far: the worker goes on
    steered: dict = None          # {origin: step} the steering rule excluded while replaying the log

    def status(self) -> dict:
        return {"from_snapshot": self.from_snapshot, "replayed_from_log": self.replayed,
                "seconds": round(self.seconds, 3)}


def build_replica(genesis: Genesis, model_spec: str, device: str = "cpu", dtype: str = "fp32"):
    """Load the base model, check it is the genesis's, wrap it in a Replica. dtype: the frozen
    base's precision (node config `dtype`); the trainable scope loads as fp32 whatever it is."""
    import re

    from onebyte.model import Replica
    from onebyte.model.load import DTYPES, ModelLoadError, load_model, model_hash

    spec = model_spec or genesis.base_model_spec()
    try:
        h = model_hash(spec)
        if h != genesis.swarm["base_model_hash"]:
            raise ConfigError(f"wrong genesis: model {spec!r} has hash {h[:16]}…, the genesis "
                              f"pins {genesis.swarm['base_model_hash'][:16]}…; use the swarm's base model")
        hyper = genesis.make_hyper()
        trainable = re.compile(hyper.trainable)
        model, tokenizer = load_model(spec, DTYPES[dtype], keep_fp32=lambda name: bool(trainable.fullmatch(name)))
    except ModelLoadError as exc:
        raise ConfigError(f"model: {exc}") from None
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f'[node] device = "{device}" but no CUDA device is available')
    return Replica(model, hyper, device=device), tokenizer


def restore(genesis: Genesis, model_spec: str, device: str, sd: StateDir, ulog: UpdateLog,
            own_origin: bytes | None = None, progress=None, influence=None, prebuilt=None,
            dtype: str = "fp32") -> Restored:
    """The replica as the state dir left it: base model, newest snapshot, then the log's tail.
    progress(phase, done, total), if given, is called as it goes ("loading model",
    "loading snapshot", "replaying log"), from this (non-loop) thread.
    influence: the swarm's (window, max_abs, max_sum); steps of an origin from its budget
    breach on are not replayed (a log written before the budget existed may hold them).
    prebuilt: (replica, tokenizer, digest) of a replica that already holds the snapshot
    with that digest (a snapshot join verified it): neither built nor loaded again.
    dtype: the frozen base's precision (build_replica)."""
    progress = progress or (lambda phase, done, total: None)
    t0 = time.perf_counter()
    progress("loading model", 0, 0)
    replica, tokenizer, loaded = prebuilt or (*build_replica(genesis, model_spec, device, dtype), None)
    progress("loading snapshot", 0, 0)
    snap = read_snapshot(sd.snapshots)
    base_vv: dict[bytes, int] = {}
    _check_floor(sd, ulog, snap)
    if snap is not None and loaded is not None and snap.digest == loaded:
        base_vv = dict(snap.vv)
    elif snap is not None:
        from onebyte.model import GridError
        try:
            replica.load(snap.weights)
        except GridError as exc:
            raise StateError(f"{exc}; delete {sd.snapshots / 'snapshot.json'} to rebuild the state "
                             "from the update log") from None
        got = replica.digest()
        if got != snap.digest:
            raise StateError(f"snapshot {snap.weights} does not match its recorded digest; delete "
                             f"{sd.snapshots / 'snapshot.json'} to rebuild the state from the update log")
        base_vv = dict(snap.vv)
        logged = ulog.updates_vv()
        # A snapshot may hold peers' updates the log lacks: a joiner that started from another
        # node's snapshot (initial_snapshot), or a log tail lost with fsync = false. That is safe:
        # the engine (which knows only the log) pulls them again, they are logged, and the worker
        # skips every step already in the weights. Our *own* steps must not be ahead: we would
        # re-use their numbers for different updates.
        if own_origin is not None and base_vv.get(own_origin, 0) > logged.get(own_origin, 0):
            raise StateError(f"the snapshot holds own steps up to {base_vv[own_origin]} but the update log "
                             f"only {logged.get(own_origin, 0)} (log tail lost with fsync = false, or a "
                             "snapshot of this same key from elsewhere); move the state dir aside and start while peers are "
                             "reachable: they hold this key's steps and the node fetches them back "
                             "(docs/operations.md, Lost state dir)")
    seeder = genesis.seeder()
    _take_back_excluded(replica, seeder, ulog, base_vv)
    pending = _within_budget(ulog, ulog.updates_after(base_vv), influence)
    guard = SteeringGuard(replica, seeder, replica.hyper.steering_window, replica.hyper.steering_k2, own_origin,
                          replica.hyper.steering_checkpoints)
    for o, n in base_vv.items():
        guard.prime(o, n, lambda first, last, o=o: ulog.qs_of(o, first, last))
    steered: dict[bytes, int] = {}
    last_log = time.monotonic()
    for i in range(0, len(pending), REPLAY_CHUNK):
        progress("replaying log", i, len(pending))
        if time.monotonic() - last_log >= 10:
            last_log = time.monotonic()
            log.info("replaying the update log: %d of %d updates", i, len(pending))
        chunk = [u for u in pending[i:i + REPLAY_CHUNK] if u[1] < steered.get(u[0], u[1] + 1)]
        replica.replay([seeder.update(o, s, q) for o, s, q in chunk])
        for hit in guard.feed_all(chunk):   # a run that steers: out again, and the origin's later steps
            replica.undo([seeder.update(hit.origin, s, q) for s, q in enumerate(hit.qs, hit.step)])
            steered[hit.origin] = hit.step
    progress("replaying log", len(pending), len(pending))
    dt = time.perf_counter() - t0
    if snap is not None or pending:
        log.info("restored state: snapshot with %d updates + %d replayed from the log in %.2fs",
                 snap.updates if snap else 0, len(pending), dt)
    applied = ulog.updates_vv()
    for o, step in _breaches(ulog, influence).items():
        applied[o] = min(applied[o], step - 1)
    for o, n in base_vv.items():
        applied[o] = max(n, applied.get(o, 0))
    for o, step in steered.items():
        applied[o] = min(applied[o], step - 1)
    return Restored(replica, tokenizer, applied, snap.updates if snap else 0, len(pending), dt, guard, steered)


def _take_back_excluded(replica, seeder, ulog: UpdateLog, base_vv: dict) -> None:
    """A snapshot written before an equivocation proof came may hold the excluded steps:
    undo them (their q are in the log's proof entry) and lower base_vv to match."""
    for origin, step in ulog.exclusions().items():
        top = base_vv.get(origin, 0)
        if top < step:
            continue
        _, qs = ulog.taken_back(origin)
        replica.undo([seeder.update(origin, s, qs[s - step]) for s in range(step, min(top, step + len(qs) - 1) + 1)])
        base_vv[origin] = step - 1
        log.info("took %d step(s) of equivocating origin %s out of the snapshot", top - step + 1,
                 origin.hex()[:16])


def _check_floor(sd: StateDir, ulog: UpdateLog, snap) -> None:
    """A log that starts from a snapshot (BASE entries) needs that snapshot, or a newer one."""
    have = snap.vv if snap is not None else {}
    short = {o: n for o, n in ulog.floor_vv().items() if have.get(o, 0) < n}
    if short:
        o, n = next(iter(short.items()))
        raise StateError(f"the update log of {sd.path} starts after step {n} of origin {o.hex()[:16]} "
                         f"(compacted), but {'no snapshot' if snap is None else 'the snapshot'} covers "
                         "it; move the state dir aside and start while peers are reachable: the node "
                         "joins from a peer's snapshot (docs/operations.md, Lost state dir)")


def _breaches(ulog: UpdateLog, influence) -> dict[bytes, int]:
    """Per origin of the log, its influence-budget breach step (protocol/influence.py)."""
    if not influence or not influence[0]:
        return {}
    from onebyte.protocol.influence import first_breach
    out = {}
    floor = ulog.floor_vv()
    for origin, n in ulog.updates_vv().items():
        # A log that starts from a snapshot (compacted, or a snapshot join): the budget
        # counts from its base, as the engine's does (protocol/influence.py).
        first = floor.get(origin, 0) + 1
        b = first_breach(influence, ulog.qs_of(origin, first, n), first)
        if b is not None:
            out[origin] = b.step
    return out


def _within_budget(ulog: UpdateLog, pending: list, influence) -> list:
    cut = _breaches(ulog, influence)
    if not cut:
        return pending
    log.warning("not replaying %d origin(s) beyond their influence-budget breach: %s", len(cut),
                ", ".join(f"{o.hex()[:16]} from step {s}" for o, s in sorted(cut.items())))
    return [(o, s, q) for o, s, q in pending if s < cut.get(o, s + 1)]
