"""A node whose own loop stalled (a busy CPU) does not suspect the peers whose answers waited
unread in its socket meanwhile: its timer's lateness pushes its probes' deadlines back
(Engine.handle_timer, Probing.delay).  Fake clock and fake network."""
from onebyte.protocol import messages as msg
import onebyte.protocol.engine as engine_mod
from onebyte.protocol import PeerSuspected, ProtocolConfig
from onebyte.protocol.membership import MemberState
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import MessageType

CFG = ProtocolConfig(swarm_id=SWARM, probe_quiet_s=0.0)


def pair() -> tuple:
    """Two engines that know each other (b bootstrapped from a)."""
    net = Net(CFG)
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    net.advance(5.0)
    return net, a, b


def stalled_run(slack: float) -> tuple:
    net, a, b = pair()
    addr_a, addr_b = net.addr_of[a.node_id], net.addr_of[b.node_id]
    held = []

    def hold_b_to_a(data, src, dst):
        if src == addr_b and dst == addr_a:
            held.append(data)
            return True
        return False

    for _ in range(200):   # until A pings B; B's answers are held back from A
        if any(p.target == b.node_id for p in a.probing.probes.values()):
            break
        net.advance(0.05, drop=hold_b_to_a)
    assert any(p.target == b.node_id for p in a.probing.probes.values())
    net.advance(0.1, drop=hold_b_to_a)   # B answered; A's loop is stalled: the ACK waits
    assert held
    old = engine_mod.LAG_SLACK_S
    engine_mod.LAG_SLACK_S = slack
    try:
        net.now += 3.0                       # A wakes up 3 s late: its timer runs first
        a.handle_timer(net.now)
        # The probe in flight was judged failed (its second chance went) or put back.
        judged = [p for p in a.probing.probes.values() if p.target == b.node_id and p.retried]
        for data in held:                    # then it reads what waited in its socket
            a.receive_datagram(data, addr_b, net.now)
        net.collect(addr_a)
        net.advance(0.5)
    finally:
        engine_mod.LAG_SLACK_S = old
    return a.members.get(b.node_id).state, net.of_type(addr_a, PeerSuspected), judged


def test_answers_that_waited_in_the_socket_during_a_stall_count():
    state, suspected, judged = stalled_run(engine_mod.LAG_SLACK_S)
    assert state == MemberState.ALIVE and suspected == [] and judged == []


def test_without_the_lag_rule_the_stall_counts_against_the_probed():
    # The rule off: the late timer judges B's probe failed (only the second chance, a new
    # PING, keeps it from a suspicion here).
    state, suspected, judged = stalled_run(1e9)
    assert len(judged) == 1


def test_a_suspicion_does_not_ripen_into_a_death_during_our_own_stall():
    """b holds c suspect; b's loop stalls past the suspicion timeout while c's refutation
    waits in b's socket: the late timer does not declare c dead, the refutation then clears it."""
    from onebyte.protocol import PeerDead
    from onebyte.protocol.wire import NIL, MessageType, encode_suspect
    net = Net(CFG)
    a = net.add(1)
    first = net.addr_of[a.node_id]
    b, c = net.add(2, bootstrap=[first]), net.add(3, bootstrap=[first])
    net.advance(10.0)
    b_addr = net.addr_of[b.node_id]
    held = []

    def hold_to_b(data, src, dst):
        if dst == b_addr:
            held.append((data, src))
            return True
        return False

    a.outbox.send(msg.Push(), a.members.get(b.node_id), [encode_suspect(c.node_id, 0)], [])
    net.collect(first)
    net.deliver()
    assert b.members.get(c.node_id).state == MemberState.SUSPECT
    net.advance(0.3, drop=hold_to_b)   # c refutes; what it sends b waits in b's socket
    net.now += CFG.suspicion_timeout(3) + 2.0   # b's loop stalls past the timeout
    b.handle_timer(net.now)
    for data, src in held:
        b.receive_datagram(data, src, net.now)
    net.collect(b_addr)
    net.advance(1.0)
    assert net.of_type(b_addr, PeerDead) == []
    assert b.members.get(c.node_id).state == MemberState.ALIVE


def lose_pings(n_lost: int) -> list:
    """A probes B; the first n_lost PINGs A sends B (and every PING_REQ) are lost, and of B's
    datagrams to A only ACKs arrive (nothing else answers for B)."""
    net, a, b = pair()
    addr_a, addr_b = net.addr_of[a.node_id], net.addr_of[b.node_id]
    lost = []

    def drop(data, src, dst):
        if src == addr_a and data[9] == MessageType.PING_REQ:
            return True
        if src == addr_a and dst == addr_b and data[9] == MessageType.PING and len(lost) < n_lost:
            lost.append(data)
            return True
        return src == addr_b and dst == addr_a and data[9] != MessageType.ACK

    net.advance(3.0, drop=drop)
    return net.of_type(addr_a, PeerSuspected)


def test_a_lost_ping_gets_a_second_chance_before_any_suspicion():
    assert lose_pings(1) == []
    assert lose_pings(2)   # both lost: suspected, probe_timeout_s later than without it
