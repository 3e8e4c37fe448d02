"""A member that steers one weight (the sign of q follows that weight's noise, |q| inside every
budget) against real daemons: before the int64 state every honest node stopped at a grid
overflow; now the steering rule excludes it at the same step everywhere, the honest nodes keep
producing, take its steps back, end with identical digests, and a restart keeps the exclusion."""
from __future__ import annotations

import pytest

from byzantine_peer import ByzantinePeer, settled_excluding, start_honest
from node_harness import CONVERGE_TIMEOUT, wait_for
from test_byzantine import COMMON, closed_genesis

HONEST_STEPS = 40
WINDOW = 128     # steering_window of the test genesis: a perfect steerer's run scores 128 > k2 = 100


def steering_q(genesis_path, node_id: bytes, target: int):
    """q_of(step) for the steering member: |q| = 60, the sign of the noise at weight `target`."""
    from onebyte.model import noise_signs
    from onebyte.node.genesis import load_genesis
    seeder = load_genesis(genesis_path).seeder()
    return lambda step: 60 * noise_signs(seeder.seeds(node_id, step)[0], [target])[0]


@pytest.fixture(scope="module")
def steering_swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer")
    genesis, keys = closed_genesis(root, extra=["--hyper", f"steering_window={WINDOW}"])
    nodes, peer = {}, None
    try:
        nodes.update(start_honest(root, genesis, HONEST_STEPS, **COMMON))
        from onebyte.node.keys import read_key
        from onebyte.protocol import Identity
        evil = Identity.from_private_bytes(read_key(keys["x"])).node_id
        peer = ByzantinePeer(genesis, keys["x"], [nodes["a"].addr], steering_q(genesis, evil, 1000),
                             steps=2 * WINDOW, rate=40.0)
        peer.start()
        yield root, genesis, nodes, peer
    finally:
        if peer is not None:
            peer.stop()
        for n in nodes.values():
            n.cleanup()


def test_steering_member_is_excluded_and_nobody_halts(steering_swarm):
    root, genesis, nodes, peer = steering_swarm
    honest = list(nodes.values())
    digest = wait_for(lambda: settled_excluding(honest, peer.node_id, 1, "steering", HONEST_STEPS),
                      CONVERGE_TIMEOUT, "honest nodes to exclude the steering member and converge", 0.5)
    for n in honest:
        assert n.proc.poll() is None
        st = n.status()
        assert st["worker_state"] in ("done", "idle", "producing", "replaying")
        assert peer.node_id.hex() not in st["version_vector"]["by_origin"] or \
            st["version_vector"]["by_origin"][peer.node_id.hex()] == 0
        assert st["steering"]["largest_ratio"][peer.node_id.hex()] > 100
        assert all(r < 100 for o, r in st["steering"]["largest_ratio"].items() if o != peer.node_id.hex())
        assert "steers single weights" in n.stderr()
    # the weights hold none of its steps: equal to the honest updates alone (the union of the logs)
    from node_harness import union_digest
    want, _ = union_digest([n.state_dir for n in honest], genesis)
    assert want == digest
    # A restart replays its log and keeps the exclusion (it is in the log).
    b = nodes["b"]
    b.proc.terminate()
    b.proc.wait(60)
    b.start()
    b.wait_ready()
    assert wait_for(lambda: b.digest()["digest"] == digest and b.status()["replay_backlog"] == 0,
                    CONVERGE_TIMEOUT, "b to restart into the same digest", 0.5)
    assert b.status()["excluded_origins"][peer.node_id.hex()] == {"step": 1, "reason": "steering"}
