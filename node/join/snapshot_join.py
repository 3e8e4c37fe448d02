"""Snapshot join: at start, take an attested snapshot from peers instead of replaying history.

    plan   ask the bootstrap peers (and the peers they list) for their newest snapshot
           (digest, version vector, SHA-256), their log's floor and their log's vv
    decide join if a snapshot holds >= snapshot_join_min_updates updates our log lacks, or
           if every peer compacted steps our log lacks (full replay is then impossible)
    attest a candidate (digest, vv) counts the members that report the same digest at the
           same vv (their own snapshot, their live weights, or undoing a few updates);
           fewer than snapshot_attest: not used
    fetch  chunked, resumable by byte offset (<state_dir>/snapshots/.join-<sha>.part), from
           any holder; the file must hash to the advertised SHA-256
    verify load it into a replica of the base model: its digest must be the attested one

Any failure drops that candidate (the next one is tried) and, when none is left, the node
falls back to replaying its log and pulling the rest (a full replay for a fresh node). The
transport is not authenticated; every check is by content (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..config import format_addr, parse_addr
from ..storage.snapwire import TIMEOUT_S, ask, file_sha256, request, vv_from_json, vv_to_json

log = logging.getLogger("onebyte.node.join.snapshot_join")

GET_BYTES = 16 << 20   # bytes per `get` request: a lost connection costs at most this much
MAX_PEERS = 8          # peers asked for their snapshot info
ATTEST_TIMEOUT_S = 120.0


class JoinRefused(Exception):
    """A candidate snapshot failed a check (the message says which)."""


@dataclass
class Candidate:
    digest: str
    vv: dict
    sha256: str
    size: int
    holders: list = field(default_factory=list)   # (host, port) that serve this file
    attested_by: set = field(default_factory=set)  # node ids that reported this digest at vv

    @property
    def updates(self) -> int:
        return sum(self.vv.values())


@dataclass
class JoinPlan:
    candidates: list                    # best first
    infos: dict                         # addr -> info
    behind_floor: bool                  # peers compacted steps our log lacks


async def survey(bootstrap: list, swarm_hex: str) -> dict:
    """info from the bootstrap peers and the peers they list, up to MAX_PEERS."""
    infos: dict = {}
    todo = list(dict.fromkeys(tuple(a[:2]) for a in bootstrap))
    seen = set(todo)
    while todo and len(infos) < MAX_PEERS:
        batch, todo = todo[:MAX_PEERS - len(infos)], todo[MAX_PEERS - len(infos):]
        answers = await asyncio.gather(*(ask(a, swarm_hex, {"op": "info"}) for a in batch))
        for addr, info in zip(batch, answers):
            if info is None:
                continue
            infos[addr] = info
            for p in info.get("peers", [])[:64]:
                try:
                    pa = parse_addr(p, "peer", allow_port0=False)
                except Exception:
                    continue
                if pa not in seen:
                    seen.add(pa)
                    todo.append(pa)
    return infos


def plan(infos: dict, ours: dict, floor: dict) -> JoinPlan:
    """Candidates from the peers' infos, newest first; a snapshot that does not cover our
    log's own floor cannot be combined with our log and is left out."""
    by_key: dict = {}
    floors = []
    behind = bool(infos)
    for addr, info in infos.items():
        try:
            peer_floor = vv_from_json(info.get("floor", {}))
            floors.append(peer_floor)
            s = info.get("snapshot")
            if s is None:
                behind = False
                continue
            vv = vv_from_json(s["vv"])
            key = (str(s["digest"]), str(s["sha256"]), tuple(sorted(vv.items())))
            c = by_key.setdefault(key, Candidate(str(s["digest"]), vv, str(s["sha256"]), int(s["size"])))
        except (KeyError, TypeError, ValueError):
            continue
        c.holders.append(addr)
        c.attested_by.add(str(info.get("node")))
        if all(ours.get(o, 0) >= n for o, n in peer_floor.items()):
            behind = False   # this peer can still serve us every record we lack
    cands = [c for c in by_key.values() if all(c.vv.get(o, 0) >= n for o, n in floor.items())]
    # Best: a snapshot past every peer's floor (every record after it is still served), then newest.
    cands.sort(key=lambda c: (not all(c.vv.get(o, 0) >= n for f in floors for o, n in f.items()),
                              -c.updates, -len(c.attested_by)))
    return JoinPlan(cands, infos, behind)


def gain(c: Candidate, ours: dict) -> int:
    """Updates the snapshot holds that our log does not."""
    return sum(max(0, n - ours.get(o, 0)) for o, n in c.vv.items())


async def attest(c: Candidate, infos: dict, swarm_hex: str, needed: int) -> bool:
    """Ask members that do not hold this snapshot for their digest at its vv, until `needed`
    distinct members agree; one that answers another digest refutes it."""
    others = [(a, i) for a, i in infos.items() if str(i.get("node")) not in c.attested_by]
    for addr, info in others:
        if len(c.attested_by) >= needed:
            break
        ans = await ask(addr, swarm_hex, {"op": "attest", "vv": vv_to_json(c.vv)},
                        ATTEST_TIMEOUT_S)
        if ans is None:
            continue
        if ans.get("digest") != c.digest:
            raise JoinRefused(f"member {format_addr(addr)} holds digest {str(ans.get('digest'))[:16]} at "
                              f"that version vector, not {c.digest[:16]}")
        c.attested_by.add(str(info.get("node")))
    return len(c.attested_by) >= needed


async def fetch(c: Candidate, directory: Path, swarm_hex: str, progress=None) -> Path:
    """Download the candidate's file into directory, resuming a partial one; checked by SHA-256."""
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f".join-{c.sha256[:32]}.part"
    for stale in directory.glob(".join-*.part"):
        if stale != part:
            stale.unlink(missing_ok=True)
    last_error = "no holder"
    for addr in c.holders:
        try:
            await _fetch_from(addr, c, part, swarm_hex, progress)
        except (OSError, asyncio.TimeoutError, ValueError, JoinRefused) as exc:
            last_error = f"{format_addr(addr)}: {exc}"
            continue
        sha = await asyncio.to_thread(file_sha256, part)
        if sha == c.sha256:
            return part
        part.unlink(missing_ok=True)
        last_error = f"{format_addr(addr)}: the file does not hash to the advertised SHA-256"
    raise JoinRefused(f"cannot fetch the snapshot ({last_error})")


async def _fetch_from(addr, c: Candidate, part: Path, swarm_hex: str, progress) -> None:
    with open(part, "ab") as f:
        while (have := f.tell()) < c.size:
            ans, reader, writer = await request(addr, swarm_hex, {"op": "get", "sha256": c.sha256,
                                                                   "offset": have, "length": GET_BYTES}, TIMEOUT_S)
            try:
                if not ans.get("ok"):
                    raise JoinRefused(str(ans.get("error")))
                n = int(ans["length"])
                if n <= 0 or have + n > c.size:
                    raise JoinRefused("bad length")
                while n > 0:
                    data = await asyncio.wait_for(reader.read(min(n, 1 << 20)), TIMEOUT_S)
                    if not data:
                        raise ConnectionError("connection closed mid-chunk")
                    f.write(data)
                    n -= len(data)
                f.flush()
            finally:
                writer.close()
            if progress:
                progress("fetching snapshot", f.tell(), c.size)
    if part.stat().st_size != c.size:
        raise JoinRefused("size mismatch")


@dataclass
class Joined:
    replica: object
    tokenizer: object
    digest: str
    vv: dict
    source: str
    attested_by: int
    seconds: float

    def status(self) -> dict:
        return {"digest": self.digest, "updates": sum(self.vv.values()), "source": self.source,
                "attested_by": self.attested_by, "seconds": round(self.seconds, 3)}


async def join(cfg, genesis, sd, ulog, progress) -> Joined | None:
    """The whole join (see the module doc); None: replay the log as usual."""
    import time

    from ..storage.state import build_replica
    t0 = time.perf_counter()
    swarm_hex = genesis.swarm_id.hex()
    progress("asking peers for snapshots", 0, 0)
    infos = await survey(list(cfg.peers), swarm_hex)
    ours, floor = ulog.updates_vv(), ulog.floor_vv()
    p = plan(infos, ours, floor)
    worth = [c for c in p.candidates if p.behind_floor or gain(c, ours) >= max(1, cfg.snapshot_join_min_updates)]
    if not worth:
        if p.behind_floor:
            log.error("every peer compacted steps this log lacks and none offers a usable snapshot; "
                      "the node cannot catch up until one does (docs/operations.md, Snapshot join)")
        return None
    replica = tokenizer = None
    for c in worth:
        try:
            # Behind every peer's horizon there is no replay to fall back to: a swarm of fewer
            # members than snapshot_attest is then trusted as far as it answers.
            needed = min(cfg.snapshot_attest, len(p.infos)) if p.behind_floor else cfg.snapshot_attest
            if not await attest(c, p.infos, swarm_hex, needed):
                raise JoinRefused(f"only {len(c.attested_by)} member(s) attest it, snapshot_attest = "
                                  f"{cfg.snapshot_attest}")
            path = await fetch(c, sd.snapshots, swarm_hex, progress)
            progress("verifying snapshot", 0, 0)
            if replica is None:
                replica, tokenizer = await asyncio.to_thread(build_replica, genesis, cfg.model, cfg.device, cfg.dtype)
            got = await asyncio.to_thread(_load_digest, replica, path)
            if got != c.digest:
                path.unlink(missing_ok=True)
                raise JoinRefused(f"its weights hash to {got[:16]}, not the attested {c.digest[:16]}")
        except JoinRefused as exc:
            log.warning("snapshot %s (%d updates) not used: %s", c.digest[:16], c.updates, exc)
            continue
        await asyncio.to_thread(sd.install_snapshot, path, c.vv, c.digest, ulog)
        dt = time.perf_counter() - t0
        log.info("joined from snapshot %s (%d updates, attested by %d members, from %s) in %.1fs",
                 c.digest[:16], c.updates, len(c.attested_by), format_addr(c.holders[0]), dt)
        return Joined(replica, tokenizer, c.digest, c.vv, format_addr(c.holders[0]), len(c.attested_by), dt)
    log.warning("no snapshot passed the checks: replaying the update log instead (and pulling the rest)")
    return None


def _load_digest(replica, path: Path) -> str:
    from onebyte.model import GridError
    try:
        replica.load(path)
    except GridError as exc:
        return f"unreadable ({exc})"
    return replica.digest()
