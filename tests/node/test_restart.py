"""One node, SIGKILLed when quiet and restarted with a torn log tail: same digest, nothing
lost, nothing applied twice."""

from __future__ import annotations

from node_harness import Node, union_digest, wait_for


def test_sigkill_then_restart_with_torn_tail_keeps_the_digest(tmp_path, genesis_path):
    n = Node(tmp_path, "solo", genesis_path, [], max_steps=20, snapshot_every=7, threads=1).start()
    n.wait_ready()
    wait_for(lambda: n.status()["worker_state"] == "done", 120, "20 own steps")
    before = n.digest()
    assert before["updates"] == 20
    n.kill()
    # a crash in the middle of an append leaves a partial entry at the end of the log
    with open(n.state_dir / "updates.log", "ab") as f:
        f.write(b"\x40\x00\x00\x00\x12\x34")
    n.start()
    st = n.wait_ready()
    assert st["log"]["truncated_bytes"] == 6
    assert st["own_steps"] == 20
    assert st["restored"]["from_snapshot"] + st["restored"]["replayed_from_log"] == 20
    after = wait_for(lambda: (d := n.digest())["updates"] == 20 and d, 60, "the restored state")
    assert after["digest"] == before["digest"]
    assert after["digest"] == union_digest([n.state_dir], genesis_path)[0]
    assert n.terminate() == 0
