"""A Byzantine member publishing max q against real daemons (closed swarm of 4 keys, tiny
model): the honest nodes keep running, exclude it at the same step, end with identical
digests, and a restart does not replay its excluded steps."""
from __future__ import annotations

import pytest

from byzantine_peer import ByzantinePeer, settled_excluding, start_honest
from node_harness import CONVERGE_TIMEOUT, run_cli, wait_for

from onebyte.protocol.influence import first_breach

COMMON = dict(step_interval_s=0.05, snapshot_every=25, threads=1)
HONEST_STEPS = 30


def closed_genesis(root, extra=()):
    from onebyte.node.keys import read_key, write_key
    from onebyte.protocol import Identity
    keys = {}
    for name in ("a", "b", "c", "x"):
        (root / name).mkdir(parents=True, exist_ok=True)
        keys[name] = root / name / "node.key"
        write_key(keys[name])
    members = [Identity.from_private_bytes(read_key(k)).public_bytes().hex() for k in keys.values()]
    path = root / "genesis.toml"
    args = ["init", "--model", "tiny", "--data", "builtin:sentiment", "--name", "byz", "--out", path,
            "--hyper", "lr=0.0001", "--record-linger", "0.1", "--updates-per-record", "8",
            "--max-rate", "200", "--admission", "closed"]
    for m in members:
        args += ["--member", m]
    r = run_cli(*args, *extra)
    assert r.returncode == 0, r.stderr
    return path, keys


def max_q(step: int) -> int:
    return 5 if step <= 10 else 127    # a few plausible steps, then the largest push there is


@pytest.fixture(scope="module")
def byzantine_swarm(tmp_path_factory):
    root = tmp_path_factory.mktemp("byz")
    genesis, keys = closed_genesis(root)
    nodes, peer = {}, None
    try:
        nodes.update(start_honest(root, genesis, HONEST_STEPS, **COMMON))
        peer = ByzantinePeer(genesis, keys["x"], [nodes["a"].addr], max_q, steps=120, rate=20.0)
        peer.start()
        yield root, genesis, nodes, peer
    finally:
        if peer is not None:
            peer.stop()
        for n in nodes.values():
            n.cleanup()


def test_max_q_member_is_excluded_and_honest_nodes_agree(byzantine_swarm):
    root, genesis, nodes, peer = byzantine_swarm
    cfg = peer.config
    breach = first_breach((cfg.influence_window, cfg.influence_max_abs, cfg.influence_max_sum),
                          [max_q(s) for s in range(1, 121)])
    assert breach is not None and breach.step < 30
    honest = list(nodes.values())
    digest = wait_for(lambda: settled_excluding(honest, peer.node_id, breach.step, breach.reason, HONEST_STEPS),
                      CONVERGE_TIMEOUT,
                      "honest nodes to exclude the Byzantine member and converge", 0.5)
    for n in honest:
        assert n.proc.poll() is None
        st = n.status()
        assert st["version_vector"]["by_origin"][peer.node_id.hex()] == breach.step - 1
        assert st["counters"]["origins_excluded"] == 1
        assert "excluded from step" in n.stderr()
    # A restart replays its log and reaches the same digest (no excluded step in it).
    b = nodes["b"]
    b.proc.terminate()
    b.proc.wait(60)
    b.start()
    b.wait_ready()
    assert wait_for(lambda: b.digest()["digest"] == digest and b.status()["replay_backlog"] == 0,
                    CONVERGE_TIMEOUT, "b to restart into the same digest", 0.5)
