"""Real daemons across the lab's lossy, delayed switch (10% loss, 50 +- 20 ms on every link):
four public nodes form a swarm and train; the swarm splits into two halves that both keep
training, then heals; half of the nodes are SIGKILLed and restarted (one at a new address)
while the rest train; a node's address moves while it runs; finally the producers stop and
every digest is identical, equal to a fresh replica replaying the union of the logs.

The tests share one swarm and run in order (each builds on the last), as tests/node/test_swarm.py
does: four daemon start-ups instead of sixteen on a 2-core machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import netlab
from netlab_swarm import (COMMON, LabNode, alive_views, make_genesis, nothing_lost, stop_producing,
                          union_digest, wait_converged, wait_for)
from netlab_switch import Policy
from node_harness import Pending

pytestmark = pytest.mark.slow

WAN = Policy(loss=0.10, delay_s=0.050, jitter_s=0.020)
NAMES = ("a", "b", "c", "d")
CATCH_UP = 120.0       # generous: other engineers' tests share the 2 cores


def marks(nodes) -> dict[str, int]:
    """origin -> own steps, now, of each running node."""
    return {st["node_id"]: st["own_steps"] for st in (n.status() for n in nodes)}


def holds(nodes, want: dict[str, int]) -> bool:
    """Every node in `nodes` holds at least `want[origin]` updates of each origin."""
    for n in nodes:
        vv = n.status()["version_vector"]["by_origin"]
        if any(vv.get(o, 0) < k for o, k in want.items()):
            return False
    return True


def all_alive(nodes) -> bool:
    views = alive_views(nodes)
    return len(views) == len(nodes) and all(len(v) == len(nodes) - 1 for v in views.values())


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    if why := netlab.unavailable():
        pytest.skip(f"network lab unavailable: {why}")
    root = tmp_path_factory.mktemp("wan")
    genesis = make_genesis(root / "genesis.toml")
    nodes: dict[str, LabNode] = {}
    with netlab.Lab(seed=11, policy=WAN) as lab:
        for name in NAMES:
            lab.add_host(name)
        lab.start()
        try:
            a = nodes["a"] = LabNode(lab, "a", root, genesis, [], **COMMON).start()
            for name in NAMES[1:]:
                nodes[name] = LabNode(lab, name, root, genesis, [a.addr], **COMMON).start()
            for n in nodes.values():
                n.wait_ready()
            yield lab, nodes, genesis
        finally:
            for n in nodes.values():
                n.cleanup()


def test_swarm_forms_and_trains_over_lossy_delayed_links(wan):
    lab, nodes, _ = wan
    group = list(nodes.values())
    wait_for(lambda: all_alive(group), CATCH_UP, "every node to see the three others alive", 0.5)
    wait_for(lambda: all(n.status()["own_steps"] >= 5 for n in group), CATCH_UP, "5 own steps each", 0.5)
    want = marks(group)
    wait_for(lambda: holds(group, want), CATCH_UP, "every update so far to reach every node", 0.5)
    c = lab.counters()
    assert c["drop_loss"] > 0 and c["delivered"] > 0     # the links really were lossy
    lab.check()


def test_partition_both_halves_train_then_heal(wan):
    lab, nodes, _ = wan
    left, right = [nodes["a"], nodes["b"]], [nodes["c"], nodes["d"]]
    lab.partition(["a", "b"], ["c", "d"])
    at_split = marks(left + right)
    more = {o: k + 15 for o, k in at_split.items()}
    wait_for(lambda: all(marks([n])[n.node_id] >= more[n.node_id] for n in left + right), CATCH_UP,
             "both halves to train 15 more steps per node", 0.5)
    # neither half holds a step the other took after the split (what was in flight then was
    # sent before it, so it holds only steps counted in at_split)
    for mine, theirs in (("a", "c"), ("a", "d"), ("c", "a"), ("d", "b")):
        vv = nodes[mine].status()["version_vector"]["by_origin"]
        assert vv.get(nodes[theirs].node_id, 0) <= at_split[nodes[theirs].node_id], (mine, theirs)
    lab.heal()
    want = marks(left + right)
    wait_for(lambda: holds(left + right, want), CATCH_UP, "both halves' updates to reach everyone", 0.5)
    wait_for(lambda: all_alive(left + right), CATCH_UP, "membership to heal", 0.5)


def test_half_the_nodes_sigkilled_and_restarted_while_the_rest_train(wan):
    lab, nodes, _ = wan
    survivors, victims = [nodes["a"], nodes["b"]], [nodes["c"], nodes["d"]]
    logged = marks(victims)
    for n in victims:
        n.kill()
    before = marks(survivors)
    wait_for(lambda: all(v >= before[o] + 10 for o, v in marks(survivors).items()), CATCH_UP,
             "the survivors to keep training", 0.5)
    lab.readdress("d")                 # d comes back at a new address, with its key and state dir
    for n in victims:
        n.start()
    for n in victims:
        st = n.wait_ready()
        assert st["own_steps"] >= logged[st["node_id"]]          # nothing it had logged was lost
    everyone = survivors + victims
    want = marks(everyone)
    wait_for(lambda: holds(everyone, want), CATCH_UP, "every update, the victims' included, everywhere", 0.5)
    wait_for(lambda: all_alive(everyone), CATCH_UP, "the restarted nodes to be alive everywhere", 0.5)


def test_a_running_node_whose_address_changes_keeps_identity_and_history(wan):
    lab, nodes, _ = wan
    b = nodes["b"]
    identity, history = b.status()["node_id"], b.status()["own_steps"]
    new_ip = lab.readdress("b")
    others = [n for n in nodes.values() if n is not b]

    def seen_at_new_address():
        for n in others:
            peers = {p["node_id"]: p for p in n.status()["peers"]}
            p = peers.get(identity)
            if p is None or p["state"] != "alive" or not p["addr"].startswith(f"{new_ip}:"):
                return Pending(f"{n.name} holds b as {p and {k: p[k] for k in ('state', 'addr', 'incarnation')}}; "
                               f"b: {b.status().get('nat')}")
        return True
    wait_for(seen_at_new_address, CATCH_UP, "every peer to know b alive at its new address", 0.5)
    st = b.status()
    assert st["node_id"] == identity and st["own_steps"] >= history
    want = {identity: st["own_steps"] + 5}
    wait_for(lambda: holds(list(nodes.values()), want), CATCH_UP, "b's steps after the move everywhere", 0.5)


def test_producers_stop_and_every_digest_is_identical(wan):
    lab, nodes, genesis = wan
    group = list(nodes.values())
    stop_producing(group)
    digest, _ = wait_converged(group, CATCH_UP)
    assert nothing_lost(group)
    expect, count = union_digest([Path(n.state_dir) for n in group], genesis)
    assert digest == expect
    assert count == sum(n.status()["own_steps"] for n in group)
    lab.check()
