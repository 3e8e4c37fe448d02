"""A node whose state dir is lost restarts with its old key: it learns its earlier steps back
from its peers before producing, never reuses a step number, and reaches the swarm's digest
(issue 9; docs/operations.md, "Lost state dir")."""

from __future__ import annotations

import shutil

import pytest

from node_harness import CONVERGE_TIMEOUT, Node, union_digest, wait_for

pytestmark = pytest.mark.slow

STEPS = {"a": 20, "b": 40, "c": 20}
COMMON = dict(step_interval_s=0.05, snapshot_every=10, threads=1)


def settled(nodes, total):
    sts = [n.status() for n in nodes]
    if any(s["version_vector"]["updates"] != total or s["replay_backlog"] for s in sts):
        return None
    digests = {n.digest()["digest"] for n in nodes}
    return digests.pop() if len(digests) == 1 else None


def test_empty_state_restart_with_the_same_key_learns_its_steps_first(tmp_path, genesis_path):
    nodes = []
    try:
        a = Node(tmp_path, "a", genesis_path, [], max_steps=STEPS["a"], **COMMON).start()
        nodes.append(a)
        a.wait_ready()
        b = Node(tmp_path, "b", genesis_path, [a.addr], max_steps=STEPS["b"], **COMMON).start()
        c = Node(tmp_path, "c", genesis_path, [a.addr], max_steps=STEPS["c"], **COMMON).start()
        nodes += [b, c]
        b.wait_ready()
        c.wait_ready()
        b_id = b.status()["node_id"]
        wait_for(lambda: b.status()["own_steps"] >= 12, 120, "b to take 12 own steps", 0.05)
        assert b.terminate() == 0          # a graceful stop: its records reach the peers
        shutil.rmtree(b.state_dir)         # ... and then its state dir is lost
        held = wait_for(lambda: (n := a.status()["version_vector"]["by_origin"].get(b_id, 0)) >= 12 and n,
                        60, "a to hold b's steps")
        b.start()
        b.wait_ready()
        total = sum(STEPS.values())
        digest = wait_for(lambda: settled([a, b, c], total), CONVERGE_TIMEOUT, "a, b, c to converge", 0.5)
        st_b = b.status()
        assert st_b["own_history"]["settled"] and not st_b["own_history"]["waiting"]
        assert st_b["own_history"]["reported_step"] >= held
        assert st_b["counters"]["own_updates_learned"] >= held
        assert st_b["own_steps"] == STEPS["b"]
        for n in (a, b, c):
            st = n.status()
            assert st["version_vector"]["by_origin"][b_id] == STEPS["b"]
            assert st["equivocations"] == 0, n.name   # b never signed a step number twice
            assert st["weights_diverged"] == 0, n.name
        # every node's log agrees on every (origin, step), and replaying their union is the digest
        expect, count = union_digest([n.state_dir for n in (a, b, c)], genesis_path)
        assert count == total and digest == expect
        assert "own history learned from" in b.stderr()
    finally:
        for n in nodes:
            n.cleanup()
