"""Probes skip members whose own traffic proved them alive lately (issue 12): fewer PINGs
while records flow, and a member that dies is still declared dead within the SWIM bound plus
probe_quiet_s.  Simulator with a fake clock only."""
from dataclasses import replace

import pytest

from onebyte.protocol import ProtocolConfig
from onebyte.protocol.config import ProtocolConfigError
from onebyte.protocol.membership import MemberState
from onebyte.protocol.sim import NetConfig, Swarm
from onebyte.protocol.testing import SWARM

CFG = ProtocolConfig(swarm_id=SWARM)


def flowing_swarm(cfg, n=6, seed=5):
    sw = Swarm(n, cfg, seed=seed, net=NetConfig(delay_s=0.005, jitter_s=0.002))
    sw.start_all(stagger_s=1.0)
    sw.run_for(10.0)
    for node in sw.nodes:
        sw.set_publishing(node, 3.0)
    sw.run_for(10.0)
    return sw


def pings(sw) -> int:
    return sum(x.engine.counters["bytes_by_kind"]["out"].get("ping", 0) for x in sw.nodes)


def test_members_heard_from_lately_are_not_pinged():
    counts = {}
    for quiet in (0.0, CFG.probe_quiet_s):
        sw = flowing_swarm(replace(CFG, probe_quiet_s=quiet))
        before = pings(sw)
        sw.run_for(30.0)
        counts[quiet] = pings(sw) - before
    # Each node pushes a record to every peer at least once per linger (4 s), so nearly every
    # turn of the round-robin finds its target heard from within probe_quiet_s.
    assert counts[CFG.probe_quiet_s] < counts[0.0] / 3


def test_a_crashed_member_is_declared_dead_within_the_bound_while_records_flow():
    sw = flowing_swarm(CFG)
    victim = sw.nodes[2]
    victim_id = victim.engine.node_id
    sw.crash(victim)
    n = len(sw.nodes)
    # SWIM: every survivor probes the victim within one round (n periods) of its silence, plus
    # the quiet window, then the suspicion timeout; one period of slack for the indirect probes.
    bound = (CFG.probe_quiet_s + (n + 1) * CFG.probe_interval_s
             + CFG.suspicion_timeout(n) + CFG.probe_interval_s)
    sw.run_for(bound)
    for node in sw.nodes:
        if node is not victim:
            m = node.engine.members.get(victim_id)
            assert m is None or m.state == MemberState.DEAD
    # and no live member was suspected on the way
    for node in sw.nodes:
        if node is not victim:
            for other in sw.nodes:
                if other is not victim and other is not node:
                    assert node.engine.members.get(other.engine.node_id).state == MemberState.ALIVE


def test_probe_quiet_s_is_checked():
    with pytest.raises(ProtocolConfigError):
        ProtocolConfig(swarm_id=SWARM, probe_quiet_s=-1.0)


def test_nodes_that_know_their_bound_address_drop_the_nat_filter_once_all_are_open():
    """A daemon passes its bound address: it starts as NAT (cautious) until peers report its
    observed address.  Once it and every live member are OPEN, membership filters nothing
    again, so the no-NAT rules (quiet probes) apply to real daemons too."""
    from onebyte.protocol.testing import Net, SWARM
    from onebyte.protocol import ProtocolConfig
    net = Net(ProtocolConfig(swarm_id=SWARM))
    addrs = [(f"10.0.0.{i}", 7000) for i in (1, 2, 3)]
    a = net.add(1, addr=addrs[0], bound_addr=("0.0.0.0", 7000))
    b = net.add(2, addr=addrs[1], bootstrap=[addrs[0]], bound_addr=("0.0.0.0", 7000))
    c = net.add(3, addr=addrs[2], bootstrap=[addrs[0]], bound_addr=("0.0.0.0", 7000))
    assert a.members.reachable is not None   # cautious until told
    net.deliver()
    net.advance(20.0)
    assert all(e.nat.kind.name == "OPEN" for e in (a, b, c))
    assert all(e.members.reachable is None for e in (a, b, c))


def test_a_quiet_member_is_not_pinged_only_to_hear_our_address_once_a_few_peers_told_it():
    """Before, every member was pinged at least once (its ACK reports our observed address);
    once QUORUM peers reported it, a member whose traffic proves it alive is skipped from the
    start, and its round trip is unknown until a probe does go."""
    sw = flowing_swarm(CFG, n=12)
    sw.run_for(20.0)
    assert all(node.engine.nat.observed_enough() for node in sw.nodes)
    never_pinged = sum(1 for node in sw.nodes for m in node.engine.members.live_members() if m.probe.rtt is None)
    assert never_pinged > len(sw.nodes)   # more than one per node, of 11 each
