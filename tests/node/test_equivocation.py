"""Equivocation resolved against real daemons (closed swarm of 4 keys, tiny model): a
Byzantine member signs two versions of the same steps and sends one to node b, the other to
node c.  The proof is found and spreads; every honest node excludes the member from the
first conflicting step, takes back what it had applied, and ends with the digest of a
replay of the union of the logs minus the excluded steps; a restart keeps that digest."""
from __future__ import annotations

import pytest

from byzantine_peer import EquivocatingPeer, settled_excluding, start_honest
from node_harness import CONVERGE_TIMEOUT, union_digest, wait_for
from test_byzantine import closed_genesis

COMMON = dict(step_interval_s=0.05, snapshot_every=10, threads=1)
HONEST_STEPS = 30
PLAIN = 8                      # steps published to everyone first
VERSION_A = [3] * 8            # steps 9..16 as sent to b
VERSION_B = [3, 3, 3, -3, 3, 3, 3, 3]   # ... and to c: they differ first at step 12
CONFLICT = PLAIN + 4


@pytest.fixture(scope="module")
def equivocation_swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("equiv")
    genesis, keys = closed_genesis(root)
    nodes, peer = {}, None
    try:
        nodes.update(start_honest(root, genesis, HONEST_STEPS, **COMMON))
        a = nodes["a"]
        targets = [(nodes["b"].addr, VERSION_A), (nodes["c"].addr, VERSION_B)]
        peer = EquivocatingPeer(genesis, keys["x"], [a.addr, nodes["b"].addr, nodes["c"].addr], targets)
        peer.start()
        yield root, genesis, nodes, peer
    finally:
        if peer is not None:
            peer.stop()
        for n in nodes.values():
            n.cleanup()


def test_equivocation_to_different_nodes_ends_in_identical_digests(equivocation_swarm):
    root, genesis, nodes, peer = equivocation_swarm
    honest = list(nodes.values())
    digest = wait_for(lambda: settled_excluding(honest, peer.node_id, CONFLICT, "equivocation", HONEST_STEPS),
                      CONVERGE_TIMEOUT,
                      "honest nodes to exclude the equivocating member and converge", 0.5)
    assert peer.sent
    for n in honest:
        assert n.proc.poll() is None
        st = n.status()
        assert st["version_vector"]["by_origin"][peer.node_id.hex()] == CONFLICT - 1
        assert st["counters"]["equivocation_proofs"] >= 1
    # b and c had applied their own version of steps 9..16 and took steps 12.. back.
    for n in (nodes["b"], nodes["c"]):
        assert "equivocated" in n.stderr()
    expect, count = union_digest([n.state_dir for n in honest], genesis)
    assert digest == expect and count == 3 * HONEST_STEPS + CONFLICT - 1
    # A restart (snapshots may hold the excluded steps) reaches the same digest.
    b = nodes["b"]
    b.proc.terminate()
    b.proc.wait(60)
    b.start()
    b.wait_ready()
    assert wait_for(lambda: b.digest()["digest"] == digest and b.status()["replay_backlog"] == 0,
                    CONVERGE_TIMEOUT, "b to restart into the same digest", 0.5)
    assert b.status()["excluded_origins"][peer.node_id.hex()] == {"step": CONFLICT, "reason": "equivocation"}
