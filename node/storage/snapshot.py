"""Snapshots: the weights at a known state, so a restart need not replay the whole log.

Layout under `<state_dir>/snapshots/`:

    weights-<digest prefix>.safetensors   the replica's weights (Replica.save)
    snapshot.json                         {"format", "weights", "vv", "digest", "updates", "created"}

`snapshot.json` is the commit point. Writing one is two atomic steps, each
"temp file + fsync + rename + fsync(dir)": first the weights under a fresh name, then
the JSON that points at them. A crash before the JSON rename leaves the previous
snapshot in force (plus an orphan weights file, removed at the next snapshot); a crash
after it leaves the new one. Readers never see a half-written file.

The version vector `vv` maps origin (hex) to n: the snapshot contains exactly the
updates 1..n of each origin (the node applies each origin's updates contiguously).

A write that does not fit (ENOSPC/EDQUOT) removes its temp file and raises DiskFull; the
previous snapshot stays in force.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .durable import atomic_write_bytes, fsync_path, removing_tmp
from ..errors import DiskFull, StateError

log = logging.getLogger("onebyte.node.storage.snapshot")

FORMAT = 1
POINTER = "snapshot.json"


@dataclass(frozen=True)
class SnapshotInfo:
    weights: Path
    vv: dict[bytes, int]
    digest: str
    updates: int


def write_snapshot(directory: Path, replica, vv: dict[bytes, int], digest: str | None = None) -> SnapshotInfo:
    """Write the replica's weights and `vv` atomically; the caller (the worker thread,
    the replica's only writer) guarantees the weights hold exactly `vv`."""
    if digest is None:
        digest = replica.digest()
    name = f"weights-{digest[:16]}-{sum(vv.values())}.safetensors"
    final = directory / name
    tmp = directory / f".{name}.tmp-{os.getpid()}"

    def write():
        directory.mkdir(parents=True, exist_ok=True)
        replica.save(tmp)
        fsync_path(tmp)
        os.replace(tmp, final)
    removing_tmp(tmp, "a snapshot", write)
    fsync_path(directory)
    pointer = _pointer(name, {o.hex(): n for o, n in sorted(vv.items())}, digest)
    try:
        atomic_write_bytes(directory / POINTER, json.dumps(pointer, indent=1).encode())
    except DiskFull:
        # The previous snapshot stays in force: give its disk space back unless it is ours.
        current = read_snapshot(directory)
        if current is None or current.weights.name != name:
            final.unlink(missing_ok=True)
        raise
    for old in directory.glob("weights-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    for tmpf in directory.glob(".*.tmp-*"):
        tmpf.unlink(missing_ok=True)
    return SnapshotInfo(final, dict(vv), digest, pointer["updates"])


def _pointer(weights_name: str, vv_hex: dict[str, int], digest: str) -> dict:
    """snapshot.json: the commit point of the snapshot in its folder."""
    return {"format": FORMAT, "weights": weights_name, "vv": vv_hex, "digest": digest,
            "updates": sum(vv_hex.values()), "created": time.time()}


def commit_standalone(weights: Path) -> dict:
    """Make a standalone snapshot (write_standalone: `weights` and its .json beside) the
    committed snapshot of its folder, as if write_snapshot had written it (e.g. a backup's
    state dir, node/client/backup.py); its .json is replaced by the folder's pointer, returned."""
    meta_path = weights.with_name(weights.name + ".json")
    meta = json.loads(meta_path.read_text())
    pointer = _pointer(weights.name, meta["vv"], meta["digest"])
    atomic_write_bytes(weights.parent / POINTER, json.dumps(pointer, indent=1).encode())
    meta_path.unlink()
    return pointer


def read_snapshot(directory: Path) -> SnapshotInfo | None:
    """The committed snapshot, or None if there is none."""
    p = directory / POINTER
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return None
    try:
        d = json.loads(raw)
        if d.get("format") != FORMAT:
            raise StateError(f"{p}: snapshot format {d.get('format')} not supported")
        vv = {bytes.fromhex(o): int(n) for o, n in d["vv"].items()}
        weights = directory / d["weights"]
        if "/" in d["weights"] or not weights.exists():
            raise StateError(f"{p} points at missing weights {d['weights']}; delete "
                             f"{p} to rebuild the state from the update log")
        return SnapshotInfo(weights, vv, str(d["digest"]), int(d.get("updates", sum(vv.values()))))
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"{p} is malformed ({exc}); delete it to rebuild the state from "
                         "the update log") from None


def write_standalone(path: Path, replica, vv: dict[bytes, int], digest: str) -> dict:
    """A snapshot requested through the status socket (for export): weights at `path`,
    metadata beside it at `path` + ".json". Same atomicity as the node's own snapshots."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")

    def write():
        replica.save(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    removing_tmp(tmp, str(path), write)
    fsync_path(path.parent)
    meta = {"format": FORMAT, "weights": path.name, "digest": digest,
            "vv": {o.hex(): n for o, n in sorted(vv.items())}, "updates": sum(vv.values())}
    atomic_write_bytes(path.with_name(path.name + ".json"), json.dumps(meta, indent=1).encode())
    return {"path": str(path), "meta": str(path) + ".json", "digest": digest, "updates": meta["updates"]}
