"""16 tiny daemons at the demo's preset train as stably as 3: the genesis scales each update's
lr for the swarm's size (Hyper.swarm_nodes, lr_swarm_scaling) and widens the grid for the
horizon (horizon_updates), so honest training neither diverges nor overflows.

Before this, `onebyte demo --model tiny --nodes 16` diverged (running loss 0.71 -> 1.09) and
every daemon exited with GridOverflowError after about 2,200 updates."""
import json

import pytest

from node_harness import Node, run_cli, wait_for

N, STEPS = 16, 160


@pytest.mark.slow
def test_sixteen_daemons_train_without_overflow(tmp_path):
    from onebyte.node.keys import public_of, read_key
    nodes = []
    try:
        for i in range(N):
            nodes.append(Node(tmp_path, f"n{i:02d}", tmp_path / "genesis.toml", [], max_steps=STEPS, threads=1,
                              snapshot_every=0))
        members = [public_of(read_key(n.key)).hex() for n in nodes]
        args = ["init", "--model", "tiny", "--data", "builtin:sentiment", "--out", tmp_path / "genesis.toml",
                "--admission", "closed", "--hyper", "lr=0.001", "--hyper", f"horizon_updates={N * STEPS * 4}",
                "--max-rate", "20"]
        for m in members:
            args += ["--member", m]
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        assert "swarm_nodes = 16" in (tmp_path / "genesis.toml").read_text()
        nodes[0].write_config()
        base = _offline_loss(nodes[0], "--base")
        nodes[0].start().wait_ready()
        first = nodes[0].addr
        for n in nodes[1:]:
            n.fields["peers"] = [first]
            n.write_config()
            n.start()
        for n in nodes[1:]:
            n.wait_ready()

        def all_done():
            sts = [n.status() for n in nodes]
            for n, st in zip(nodes, sts):
                assert st["worker_state"] != "failed", f"{n.name}: {st['worker_error']}"
            return sts if all(st["own_steps"] >= STEPS for st in sts) else None
        sts = wait_for(all_done, 600, "every node's own steps", interval=2.0)
        digests = wait_for(lambda: (d := [n.digest() for n in nodes]) and len({x["updates"] for x in d}) == 1
                           and d[0]["updates"] == N * STEPS and d, 300, "every node to apply every update", 2.0)
        assert len({d["digest"] for d in digests}) == 1
        # no divergence: the tiny model is a random init that barely learns this task, so the
        # swarm's final model, scored offline on fixed rows, stays near the base's loss (the
        # diverged 16-node run's running loss climbed from 0.71 to 1.09). The running loss in
        # status is not the criterion: a mean of 50 perturbed minibatch losses, it varies by
        # +-0.1 between nodes of one healthy run.
        final = _offline_loss(nodes[0])
        assert final < base + 0.1, (base, final, [st["loss_mean"] for st in sts])
    finally:
        for n in nodes:
            n.cleanup()


def _offline_loss(node: Node, *more) -> float:
    r = run_cli("eval", "--config", node.config, "--data", "builtin:sentiment", "--json", "--n", "256", *more)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["loss"]
