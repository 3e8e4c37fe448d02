"""`onebyte backup --out DIR`: everything a node needs to come back, consistent, in one folder.

    DIR/
        BACKUP.json         what was taken: node id, swarm id, digest and updates of the snapshot
        node.toml           the node config, as it was
        node.key            the identity key (mode 0600): in a closed swarm the one thing that
                            cannot be replaced without an amendment (docs/operations.md)
        genesis.toml        the genesis the config names
        state/              a state dir to start from: genesis.toml, updates.log,
                            snapshots/snapshot.json + weights

Order makes it consistent while the daemon runs: the log is copied first (a torn last entry is
discarded at start, as after a crash), then the daemon writes a snapshot of its weights now
(status socket `snapshot`), which covers at least every step the copied log was compacted to.
A restored node replays the log steps the snapshot lacks and pulls the rest from its peers.
Without a daemon (--offline) the state dir is copied as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..config import load_config
from ..errors import DaemonUnreachable, UserError
from ..storage.snapshot import POINTER, commit_standalone, read_snapshot
from ..ops.status import request


def _empty_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise UserError(f"--out {out} is not empty; pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)


def _copy_log(src: Path, dst: Path) -> int:
    """The log as far as it is written now (it only grows, or is replaced whole by compaction:
    an open file keeps reading the one it opened)."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        shutil.copyfileobj(f, g, 1 << 20)
        g.flush()
        os.fsync(g.fileno())
        return g.tell()


def cmd_backup(args) -> int:
    cfg = load_config(args.config)
    out = Path(args.out)
    _empty_out(out, args.force)
    state = out / "state"
    snaps = state / "snapshots"
    snaps.mkdir(parents=True)
    shutil.copy2(cfg.path, out / "node.toml")
    shutil.copy2(cfg.genesis, out / "genesis.toml")
    fd = os.open(out / "node.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Path(cfg.key).read_bytes())
    sd = cfg.state_dir
    if (sd / "genesis.toml").exists():
        shutil.copy2(sd / "genesis.toml", state / "genesis.toml")
    log_bytes = _copy_log(sd / "updates.log", state / "updates.log") if (sd / "updates.log").exists() else 0
    meta = None if args.offline else _daemon_snapshot(cfg, snaps, args.timeout)
    if meta is None:   # no daemon: its committed snapshot is as consistent as the log beside it
        meta = _copy_committed(sd / "snapshots", snaps)
    record = {"created": time.time(), "config": str(cfg.path), "state_dir": str(sd),
              "log_bytes": log_bytes, "source": "offline" if args.offline or meta.get("offline") else "daemon",
              "snapshot": {k: meta.get(k) for k in ("digest", "updates", "weights")}}
    (out / "BACKUP.json").write_text(json.dumps(record, indent=1) + "\n")
    snap = meta.get("digest")
    print(f"backed up {cfg.path} to {out}: key, config, genesis, {log_bytes:,} bytes of log"
          + (f", snapshot of {meta['updates']:,} updates (digest {snap[:16]}…)" if snap else ", no snapshot yet"))
    print(f"restore: stop the node, put {out / 'state'} at its state_dir and {out / 'node.key'} at its key; "
          "docs/operations.md, \"Backup and restore\"")
    return 0


def _daemon_snapshot(cfg, snaps: Path, timeout: float) -> dict | None:
    """The daemon's weights now, written into the backup's state dir as its committed snapshot."""
    weights = snaps / "weights-backup.safetensors"
    try:
        ans = request(cfg.socket_path, {"cmd": "snapshot", "path": str(weights.resolve())}, timeout=timeout)
    except DaemonUnreachable:
        return None
    if not ans.get("ok"):
        raise UserError(f"daemon: {ans.get('error')}")
    return commit_standalone(weights)


def _copy_committed(src: Path, dst: Path) -> dict:
    info = read_snapshot(src) if src.exists() else None
    if info is None:
        return {"offline": True}
    shutil.copy2(info.weights, dst / info.weights.name)
    shutil.copy2(src / POINTER, dst / POINTER)
    return {"offline": True, "digest": info.digest, "updates": info.updates, "weights": info.weights.name}


def add_parser(sub, env_cfg: str) -> None:
    s = sub.add_parser("backup", help="copy key, config, genesis and a consistent state into one folder",
                       description="Back up a node: its key, config and genesis, its update log and a snapshot "
                       "of its weights now (from the running daemon; --offline: the state dir as it is), as a "
                       "state dir a restored node starts from.")
    s.add_argument("--config", default=env_cfg, help="node config")
    s.add_argument("--out", required=True, help="backup folder (new or empty)")
    s.add_argument("--force", action="store_true", help="replace a non-empty --out")
    s.add_argument("--offline", action="store_true", help="do not ask the daemon (it is stopped): copy the state dir")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the daemon's snapshot")
    s.set_defaults(func=cmd_backup)
