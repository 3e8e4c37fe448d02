"""A daemon whose scope lies above a frozen trunk builds the trunk cache before its first step,
reports it in status, keeps it in the state dir and reuses it after a restart."""
from node_harness import Node, run_cli, wait_for


def test_daemon_builds_reports_and_reuses_the_trunk_cache(tmp_path):
    genesis = tmp_path / "genesis.toml"
    r = run_cli("init", "--model", "tiny", "--data", "builtin:sentiment", "--scope", "top1", "--out", genesis,
                "--hyper", "lr=0.0001")
    assert r.returncode == 0, r.stderr
    n = Node(tmp_path, "t", genesis, [], max_steps=5, eval_every=5, eval_examples=16)
    try:
        n.start().wait_ready()
        st = wait_for(lambda: (s := n.status())["own_steps"] >= 5 and s["last_eval"] and s, 300,
                      "five steps and an evaluation through the trunk cache")
        trunk = st["trunk_cache"]
        assert trunk["first_layer"] == 1 and trunk["state"] == "ready"  # tiny: 2 layers, top1 trains layer 1
        assert trunk["computed"] == trunk["examples"] > 0 and trunk["loaded"] == 0
        assert st["trainable_weights"] > 0 and 0.0 <= st["last_eval"]["accuracy"] <= 1.0
        assert (n.state_dir / "trunk.pt").is_file()
        assert n.terminate() == 0
        n.start().wait_ready()
        st = wait_for(lambda: (s := n.status())["trunk_cache"]["state"] == "ready" and s, 120, "the cache again")
        assert st["trunk_cache"]["computed"] == 0 and st["trunk_cache"]["loaded"] == trunk["examples"]
        assert n.terminate() == 0
    finally:
        n.cleanup()
