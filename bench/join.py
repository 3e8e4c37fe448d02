"""A late joiner: full replay versus snapshot join, side by side, in one run.

    python bench/join.py --json join.json                 # 100,000 updates, SmolLM2-shaped
    python bench/join.py --model tiny --updates 5000      # a quick look

The swarm's log is built synthetically, as a real swarm would have written it: `--origins`
keys publish q bytes in signed records of 32 updates (UPDATES and RECORD entries in a state
dir's update log). The swarm holds a snapshot at `--updates` minus `--tail` updates (its
newest, as snapshot_every would have left it) and the tail after it.

- full replay: a fresh joiner's work, restore() from the whole log: base model, then every
  update (timed as two fused calls, before and after the snapshot point: the bench takes the
  swarm's snapshot between them, untimed);
- snapshot join: two members serve the snapshot (node/join/snapshot_service.py, real TCP on
  loopback, default rate limit); the joiner surveys them, counts the attestations, fetches
  the file (chunked), checks its SHA-256, loads it into a replica of the base model and
  checks the weights digest, installs it (snapshot pointer, log compacted to its vv), logs
  the tail (what the engine would pull) and restores: snapshot + tail replay.

Both must reach the swarm's digest. Reported: seconds of each, `join_speedup` (full replay
time / snapshot join time) and `digests_match`. The tail's transfer over UDP is not timed
(it is the same for both joiners: the full-replay joiner pulls the whole log besides).
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import build  # noqa: E402

from onebyte.model import Hyper, Replica, Seeder  # noqa: E402
from onebyte.node.storage.snapshot import write_snapshot  # noqa: E402
from onebyte.node.join.snapshot_join import attest, fetch, plan, survey  # noqa: E402
from onebyte.node.join.snapshot_service import SnapshotServer  # noqa: E402
from onebyte.node.storage.state import StateDir, restore  # noqa: E402
from onebyte.protocol import Identity  # noqa: E402
from onebyte.protocol.records import Record, record_message  # noqa: E402

PER_RECORD = 32


def synth_log(sd: StateDir, swarm_id: bytes, origins: int, updates: int, rng: random.Random):
    """Signed records and their updates from `origins` keys, interleaved as they would arrive."""
    ulog = sd.open_log(fsync=False)
    keys = [Identity.generate() for _ in range(origins)]
    steps = [0] * origins
    for i in range(0, updates, PER_RECORD):
        k = i // PER_RECORD % origins
        ident, first = keys[k], steps[k] + 1
        n = min(PER_RECORD, updates - i)
        qs = bytes(rng.randrange(-40, 41) & 0xFF for _ in range(n))
        sig = ident.sign(record_message(swarm_id, ident.node_id, first, qs))
        rec = Record(ident.public_bytes(), ident.node_id, first, qs, sig)
        ulog.add(ident.node_id, first, first + n - 1, rec.canonical())
        ulog.append_updates(ident.node_id, first, qs)
        steps[k] += n
    ulog.sync()
    return ulog


def model_replica(kind: str):
    return Replica(build(kind), Hyper(lr=1e-5)), None


def member_server(sd: StateDir, ulog, swarm_id: bytes, node_id: bytes) -> SnapshotServer:
    """A member serving the swarm's snapshot from a state dir: no engine (no peers), no worker."""
    genesis = SimpleNamespace(swarm_id=swarm_id, seeder=None)
    return SnapshotServer(genesis, node_id, sd.snapshots, ulog, list, lambda: None, 64 << 20, 0)


async def snapshot_join(args, swarm_id, members, joiner: StateDir, tail: list):
    servers = []
    for s in members:
        assert await s.start("127.0.0.1", 0)
        servers.append((s, s._server.sockets[0].getsockname()[:2]))
    t0 = time.perf_counter()
    swarm_hex = swarm_id.hex()
    infos = await survey([a for _, a in servers], swarm_hex)
    jlog = joiner.open_log(fsync=True)
    p = plan(infos, jlog.updates_vv(), jlog.floor_vv())
    c = p.candidates[0]
    attested = await attest(c, p.infos, swarm_hex, 2)
    path = await fetch(c, joiner.snapshots, swarm_hex)
    t_fetch = time.perf_counter() - t0
    replica, tok = await asyncio.to_thread(model_replica, args.model)
    await asyncio.to_thread(replica.load, path)
    got = await asyncio.to_thread(replica.digest)
    assert got == c.digest, "snapshot digest mismatch"
    await asyncio.to_thread(joiner.install_snapshot, path, c.vv, c.digest, jlog)
    for origin, step, q in tail:   # what the engine pulls after the join
        jlog.append_updates(origin, step, [q])
    jlog.sync()
    g = SimpleNamespace(swarm_id=swarm_id, seeder=lambda: Seeder(swarm_id))
    r = await asyncio.to_thread(restore, g, "", "cpu", joiner, jlog, None, None, None,
                                (replica, tok, c.digest))
    digest = await asyncio.to_thread(r.replica.digest)
    dt = time.perf_counter() - t0
    for s, _ in servers:
        await s.close()
    return {"seconds": dt, "fetch_seconds": t_fetch, "attested": attested, "attested_by": len(c.attested_by),
            "snapshot_bytes": c.size, "tail_replayed": r.replayed, "digest": digest}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-shaped", choices=["smollm2-shaped", "tiny"])
    ap.add_argument("--updates", type=int, default=100_000)
    ap.add_argument("--tail", type=int, default=1000, help="updates after the swarm's snapshot")
    ap.add_argument("--origins", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--workdir", type=Path, help="keep the state dirs here (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    if not 0 < a.tail < a.updates:
        ap.error("--tail must be between 0 and --updates")
    work = Path(tempfile.mkdtemp(dir=a.workdir))
    try:
        out = {"command": " ".join([os.path.basename(sys.executable), "bench/join.py"]
                                   + list(sys.argv[1:] if argv is None else argv)), **run(a, work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


def run(a, work: Path) -> dict:
    rng = random.Random(a.seed)
    swarm_id = bytes(rng.randrange(256) for _ in range(32))
    g = SimpleNamespace(swarm_id=swarm_id, seeder=lambda: Seeder(swarm_id))
    seeder = Seeder(swarm_id)
    swarm = StateDir(work / "swarm")
    swarm.create()
    t = time.perf_counter()
    ulog = synth_log(swarm, swarm_id, a.origins, a.updates, rng)
    t_synth = time.perf_counter() - t
    everything = ulog.updates_after({})
    head, tail = everything[:-a.tail], everything[-a.tail:]
    # Full replay, as a fresh joiner does it: base model, then every logged update.
    head_sd = StateDir(work / "head")
    head_sd.create()
    hlog = head_sd.open_log(fsync=False)
    by_origin: dict = {}
    for o, s, q in head:
        by_origin.setdefault(o, []).append(q)
    for o, qs in by_origin.items():
        hlog.append_updates(o, 1, qs)
    hlog.sync()
    warm = Replica(build("tiny"), Hyper(lr=1e-5))   # compile the replay kernel outside the timings
    warm.replay([seeder.update(o, s, q) for o, s, q in head[:2]])
    t0 = time.perf_counter()
    r = restore(g, "", "cpu", head_sd, hlog, None, None, None, model_replica(a.model) + (None,))
    t_head = time.perf_counter() - t0
    snap_vv = hlog.updates_vv()
    snap_digest = r.replica.digest()
    write_snapshot(swarm.snapshots, r.replica, snap_vv, snap_digest)   # the swarm's snapshot (untimed)
    t0 = time.perf_counter()
    r.replica.replay([seeder.update(o, s, q) for o, s, q in tail])
    swarm_digest = r.replica.digest()
    t_full = t_head + time.perf_counter() - t0
    del r
    # A second member holding the same snapshot attests it.
    twin = StateDir(work / "twin")
    twin.create()
    shutil.copytree(swarm.snapshots, twin.snapshots)
    members = [member_server(swarm, ulog, swarm_id, b"\x01" * 16), member_server(twin, ulog, swarm_id, b"\x02" * 16)]
    joiner = StateDir(work / "joiner")
    joiner.create()
    j = asyncio.run(snapshot_join(a, swarm_id, members, joiner, tail))
    return {
        "model": a.model, "updates": a.updates, "origins": a.origins, "tail": a.tail,
        "snapshot_updates": sum(snap_vv.values()), "synth_log_seconds": round(t_synth, 2),
        "full_replay_seconds": round(t_full, 2),
        "full_replay_updates_per_s": round(a.updates / t_full, 1),
        "snapshot_join_seconds": round(j["seconds"], 2),
        "snapshot_fetch_seconds": round(j["fetch_seconds"], 2),
        "snapshot_bytes": j["snapshot_bytes"], "attested_by": j["attested_by"],
        "tail_replayed": j["tail_replayed"],
        "join_speedup": round(t_full / j["seconds"], 2),
        "digests_match": j["digest"] == swarm_digest and j["attested"],
        "swarm_digest": swarm_digest, "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
    }


if __name__ == "__main__":
    main()
