"""Snapshot join and log compaction with real daemons on loopback (issue 12, items 4 and 5).

One swarm without compaction (a, b): a late joiner takes an attested snapshot and reaches
the swarm digest; corrupted snapshot files and a lying peer are detected (the joiner falls
back to another snapshot or to a full replay). A second swarm with compaction (c, d, e):
the logs stay bounded, and e, offline past the horizon, still catches up at its restart.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from node_harness import CONVERGE_TIMEOUT, Node, union_digest, wait_for

from onebyte.node.ops.status import request

pytestmark = pytest.mark.slow

COMMON = dict(step_interval_s=0.05, snapshot_every=10, threads=1, compact_interval_s=0)
# Each joiner takes one own step: the swarm then holds 50 + one update per joiner so far.
JOIN = dict(max_steps=1, snapshot_join_min_updates=1, snapshot_attest=2, threads=1, compact_interval_s=0)


def converged(nodes, total):
    sts = [n.status() for n in nodes]
    if any(s["version_vector"]["updates"] != total or s["replay_backlog"] for s in sts):
        return None
    digests = {n.digest()["digest"] for n in nodes}
    return digests.pop() if len(digests) == 1 else None


def snapshot_meta(node: Node) -> dict:
    return json.loads((node.state_dir / "snapshots" / "snapshot.json").read_text())


@pytest.fixture(scope="module")
def swarm(tmp_path_factory, genesis_path):
    root = tmp_path_factory.mktemp("snapjoin")
    nodes: list[Node] = []
    try:
        a = Node(root, "a", genesis_path, [], max_steps=25, **COMMON).start()
        nodes.append(a)
        a.wait_ready()
        b = Node(root, "b", genesis_path, [a.addr], max_steps=25, **COMMON).start()
        nodes.append(b)
        b.wait_ready()
        digest = wait_for(lambda: converged([a, b], 50), CONVERGE_TIMEOUT, "a and b to converge", 0.5)
        yield root, a, b, digest, nodes
    finally:
        for n in nodes:
            n.cleanup()


def test_late_joiner_takes_an_attested_snapshot_and_replays_only_the_tail(swarm, genesis_path):
    root, a, b, digest, nodes = swarm
    j = Node(root, "j", genesis_path, [a.addr], **JOIN).start()
    nodes.append(j)
    st = j.wait_ready()
    joined = st["snapshot_join"]
    assert joined is not None, j.stderr()[-3000:]
    assert joined["attested_by"] >= 2
    assert joined["updates"] >= 10
    assert st["restored"]["replayed_from_log"] == 0     # nothing before the snapshot replayed
    got = wait_for(lambda: converged([a, b, j], 51), CONVERGE_TIMEOUT, "the joiner to converge", 0.5)
    assert got == union_digest([a.state_dir, b.state_dir], genesis_path)[0]
    # the joiner's log starts at the snapshot: steps below it were neither fetched nor replayed
    from onebyte.node.storage.log import UpdateLog
    floor = UpdateLog(j.state_dir / "updates.log", readonly=True).floor_vv()
    assert sum(floor.values()) == joined["updates"]
    j.terminate()


def test_corrupted_snapshot_files_are_refused_and_the_joiner_replays(swarm, genesis_path):
    root, a, b, digest, nodes = swarm
    saved = {}
    for n in (a, b):
        w = n.state_dir / "snapshots" / snapshot_meta(n)["weights"]
        saved[w] = w.read_bytes()
        data = bytearray(saved[w])
        for i in range(len(data) - 4000, len(data) - 100, 97):   # flip bytes in the tensor data
            data[i] ^= 0x5A
        w.write_bytes(bytes(data))
    try:
        k = Node(root, "k", genesis_path, [a.addr], **JOIN).start()
        nodes.append(k)
        st = k.wait_ready()
        assert st["snapshot_join"] is None
        assert "not used" in k.stderr()
        got = wait_for(lambda: converged([a, b, k], 52), CONVERGE_TIMEOUT, "the replaying joiner", 0.5)
        assert got == union_digest([a.state_dir, b.state_dir], genesis_path)[0]
        assert k.status()["restored"]["from_snapshot"] == 0
        k.terminate()
    finally:
        for w, data in saved.items():
            w.write_bytes(data)


class LyingPeer:
    """A TCP snapshot service that advertises a's snapshot version vector with another digest."""

    def __init__(self, swarm_hex: str, snap: dict):
        self.swarm_hex, self.snap = swarm_hex, snap
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = None
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def handle(reader, writer):
            await reader.readline()
            fake = {"digest": "ab" * 32, "vv": self.snap["vv"], "updates": self.snap["updates"],
                    "sha256": "cd" * 32, "size": 1234}
            writer.write(json.dumps({"ok": True, "node": "ee" * 16, "snapshot": fake, "floor": {},
                                     "log": {}, "peers": []}).encode() + b"\n")
            await writer.drain()
            writer.close()

        async def main():
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            await asyncio.Event().wait()
        self.loop.run_until_complete(main())


def test_a_peer_advertising_a_wrong_digest_is_refuted(swarm, genesis_path):
    root, a, b, digest, nodes = swarm
    from onebyte.node.genesis import load_genesis
    liar = LyingPeer(load_genesis(genesis_path).swarm_id.hex(), snapshot_meta(a))
    m = Node(root, "m", genesis_path, [f"127.0.0.1:{liar.port}", a.addr], **JOIN).start()
    nodes.append(m)
    st = m.wait_ready()
    err = m.stderr()
    assert "abababababababab" in err and "not used" in err     # the lie was seen and refused
    if st["snapshot_join"] is not None:                          # ... and an honest one taken
        assert st["snapshot_join"]["digest"] != "ab" * 32
    got = wait_for(lambda: converged([a, b, m], 53), CONVERGE_TIMEOUT, "the joiner next to a liar", 0.5)
    assert got == union_digest([a.state_dir, b.state_dir], genesis_path)[0]
    m.terminate()


def test_compaction_bounds_the_log_and_a_node_offline_past_the_horizon_catches_up(tmp_path, genesis_path):
    fields = dict(step_interval_s=0.05, snapshot_every=10, threads=1, compact_interval_s=0.5, compact_delay_s=20.0)
    nodes = []
    try:
        # c and d produce until told to stop, after e went offline: however slowly e took its
        # five steps, c and d then go on past what e holds (with a fixed max_steps they could
        # finish first and e would hold everything, which compaction can never pass).
        c = Node(tmp_path, "c", genesis_path, [], **fields).start()
        nodes.append(c)
        c.wait_ready()
        d = Node(tmp_path, "d", genesis_path, [c.addr], **fields).start()
        e = Node(tmp_path, "e", genesis_path, [c.addr], max_steps=5, snapshot_join_min_updates=1,
                 **{**fields, "compact_interval_s": 0})
        nodes += [d, e]
        e.start()
        d.wait_ready()
        e.wait_ready()
        wait_for(lambda: e.status()["own_steps"] >= 5 and e.status()["version_vector"]["updates"] >= 15,
                 CONVERGE_TIMEOUT, "e to take its steps", 0.2)
        e.terminate()          # offline while c and d go on past its horizon
        e_log = e.state_dir / "updates.log"
        from onebyte.node.storage.log import UpdateLog
        e_vv = UpdateLog(e_log, readonly=True).updates_vv()
        past = {bytes.fromhex(n.status()["node_id"]): n for n in (c, d)}
        wait_for(lambda: all(n.status()["own_steps"] >= e_vv.get(o, 0) + 40 for o, n in past.items()),
                 CONVERGE_TIMEOUT, "c and d to go 40 steps past e", 0.2)
        for n in (c, d):
            assert request(n.socket, {"cmd": "stop_producing"}, timeout=120)["ok"]

        def settled():   # every update of c, d and e's 5, the same digest (a step in flight ends first)
            t = sum(n.status()["own_steps"] for n in (c, d)) + 5
            return t if converged([c, d], t) else None
        total = wait_for(settled, CONVERGE_TIMEOUT, "c and d to converge", 0.5)

        def compacted_past_e():
            if any(n.status()["compaction"]["compactions"] == 0 for n in (c, d)):
                return None
            from onebyte.node.storage.log import UpdateLog as L
            floors = [L(n.state_dir / "updates.log", readonly=True).floor_vv() for n in (c, d)]
            return all(any(fl.get(o, 0) > e_vv.get(o, 0) for o in fl) for fl in floors) or None
        wait_for(compacted_past_e, CONVERGE_TIMEOUT, "c and d to compact past e's log", 0.5)
        for n in (c, d):
            comp = n.status()["compaction"]
            assert comp["floor_updates"] > 0
            assert comp["index_updates"] < total          # bounded: what the snapshot holds is gone
            assert comp["index_updates"] + comp["floor_updates"] >= total
        e.start()
        st = e.wait_ready()
        assert st["snapshot_join"] is not None, e.stderr()[-3000:]
        got = wait_for(lambda: converged([c, d, e], total), CONVERGE_TIMEOUT, "e to catch up", 0.5)
        assert got == converged([c, d], total)
        assert e.status()["own_steps"] == 5            # its own steps kept, none reused
    finally:
        for n in nodes:
            n.cleanup()
