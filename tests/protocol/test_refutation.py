"""A refuted suspicion must not ripen into a death at a node that missed the refutation
(fake network, fake clock).  Refutations are gossip: loss, or a NAT that lets only a few
peers reach a node, can keep one from an observer that already holds the SUSPECT."""
from onebyte.protocol import messages as msg
from onebyte.protocol import PeerAlive, PeerDead, PeerSuspected, ProtocolConfig
from onebyte.protocol.sim import NetConfig, Swarm
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import (NIL, Alive, MessageType, decode_gossip, encode_dead, encode_suspect,
                                   parse_header, unpack_body)

CFG = ProtocolConfig(swarm_id=SWARM)


def three(net):
    a = net.add(1)
    first = net.addr_of[a.node_id]
    b, c = net.add(2, bootstrap=[first]), net.add(3, bootstrap=[first])
    net.advance(10.0)
    return a, b, c


def carries_alive_of(data: bytes, eng) -> bool:
    """Does this datagram carry an ALIVE item with eng's certificate (it starts with its key)?"""
    h = parse_header(data, CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram)
    _, gossip, _ = unpack_body(h.body)
    key = eng.session.cert[:32]
    return any(isinstance(item := decode_gossip(g), Alive) and item.cert[:32] == key for g in gossip)


def accuse(net, accuser, about, inc, *to, dead=False):
    """accuser (an engine) sends a SUSPECT (or DEAD) item about `about` to each of `to`."""
    item = (encode_dead if dead else encode_suspect)(about.node_id, inc)
    for eng in to:
        accuser.outbox.send(msg.Push(), accuser.members.get(eng.node_id), [item], [])
    net.collect(net.addr_of[accuser.node_id])


def state(eng, other):
    m = eng.members.get(other.node_id)
    return m.state.name, m.incarnation


def test_an_observer_that_missed_the_refutation_asks_before_declaring_death():
    """b holds c suspect, and everything that carries c's refutation to b is lost (c's own
    datagrams, ALIVE items about c).  Half-way to the death b puts the suspicion to c and to
    its peers, and the first answer brings the refutation."""
    net = Net(CFG)
    a, b, c = three(net)
    b_addr, c_addr = net.addr_of[b.node_id], net.addr_of[c.node_id]
    accuse(net, a, c, 0, b, c)
    until = net.now + 1.5

    def lose_refutation(data, src, dst):
        return dst == b_addr and net.now < until and (src == c_addr or carries_alive_of(data, c))

    net.advance(1.5, drop=lose_refutation)
    assert state(b, c) == ("SUSPECT", 0) and state(a, c) == ("ALIVE", 1)
    net.advance(CFG.suspicion_timeout(3) + 10.0)
    assert net.of_type(b_addr, PeerDead) == []
    assert [e.node_id for e in net.of_type(b_addr, PeerAlive)] == [c.node_id]
    assert state(b, c) == ("ALIVE", 1)


def test_a_stale_accusation_is_answered_with_the_newer_certificate():
    """A SUSPECT or DEAD at an incarnation older than the one held proves the accuser missed
    a refutation: the subject, or any peer that holds the newer certificate, sends it back
    at once (no new incarnation: nothing new to refute)."""
    for dead in (False, True):
        net = Net(CFG)
        a, b, c = three(net)
        m = b.members.get(c.node_id)
        old = m.cert
        accuse(net, a, c, 0, c)
        net.advance(2.0)
        assert state(a, c) == state(b, c) == ("ALIVE", 1)
        b_addr = net.addr_of[b.node_id]
        for peer in (a, c):   # a peer, then the subject itself, hears b's old accusation
            # b holds c at incarnation 0, suspect or dead, as if the refutation had missed it.
            m.cert, m.incarnation = old, 0
            (b.members.on_dead if dead else b.members.on_suspect)(c.node_id, 0, net.now)
            accuse(net, b, c, 0, peer, dead=dead)
            net.deliver()
            assert state(b, c) == ("ALIVE", 1), (dead, peer is c)
            assert c.session.incarnation == 1
        assert b.counters["accusations_answered"] == 0
        assert a.counters["accusations_answered"] == 1
        assert c.counters["accusations_answered"] >= 1   # dead: b also told c so on sight


def test_an_accusation_at_the_current_incarnation_is_not_answered_by_a_third_party():
    """Only the subject refutes: a peer that holds the same incarnation takes the suspicion."""
    net = Net(CFG)
    a, b, c = three(net)
    accuse(net, b, c, 0, a)
    sent = len(net.log)
    net.deliver()
    assert state(a, c) == ("SUSPECT", 0)
    assert [e.node_id for e in net.of_type(net.addr_of[a.node_id], PeerSuspected)] == [c.node_id]
    back = [d for d, src, dst in net.log[sent:] if dst == net.addr_of[b.node_id]]
    assert back == []


def test_no_false_death_in_a_40_node_swarm_half_behind_nat():
    """bench/nat_sim.py --nodes 40 --publish-s 20 --drain-s 20: before stale accusations were
    answered, 3 running nodes were declared dead (2 of them by NAT'd observers that had
    missed the refutation)."""
    n = 40
    nat = {i: ("symmetric" if i % 3 == 0 else "cone") for i in range(n // 2, n)}
    deaths = []
    sw = Swarm(n, ProtocolConfig(swarm_id=bytes(32)), seed=1, net=NetConfig(delay_s=0.03, jitter_s=0.04, loss=0.1), nat=nat,
               on_event=lambda node, ev, now: isinstance(ev, PeerDead) and deaths.append((node.index, ev.node_id)))
    sw.start_all(stagger_s=2.0)
    for node in sw.nodes:
        sw.schedule(3.0, sw.set_publishing, node, 2.0)
    sw.run_for(23.0)
    for node in sw.nodes:
        sw.set_publishing(node, 0)
    sw.run_for(20.0)
    assert deaths == []   # (whether stale accusations arise here depends on the run: the
    assert sw.converged()  # answering itself is tested above, with three engines)
