"""NAT traversal in the simulator (fake clock, simulated NATs): observed addresses, no false
deaths behind NAT, hole punching through an introducer, relay fallback, keep-alive."""
import pytest

from onebyte.protocol import messages as msg
from onebyte.protocol import PeerDead, ProtocolConfig
from onebyte.protocol.nat import KEEPALIVE_S
from onebyte.protocol.sim import NetConfig, SimNat, Swarm
from onebyte.protocol.testing import SWARM
from onebyte.protocol.wire import (Alive, MessageType, NatKind, WireError, decode_gossip, encode_alive,
                                   nat_of_flags, pack_header, packb, parse_header)

CFG = ProtocolConfig(swarm_id=SWARM, updates_per_record=8, record_linger_s=1.0)
WAN = NetConfig(delay_s=0.03, jitter_s=0.04, loss=0.1)
# 0-2 public, 3-4 behind port-restricted cone NATs, 5 behind a symmetric NAT
LAB = {3: "cone", 4: "cone", 5: "symmetric"}


def swarm(n=6, nat=LAB, net=None, seed=3, **kw):
    deaths = []
    sw = Swarm(n, CFG, seed=seed, net=net or NetConfig(), nat=nat,
               on_event=lambda node, ev, now: isinstance(ev, PeerDead) and deaths.append((node.index, ev.node_id)),
               **kw)
    sw.deaths = deaths
    sw.start_all(stagger_s=1.0)
    return sw


def member(sw, a, b):
    return sw.nodes[a].engine.members.get(sw.nodes[b].engine.node_id)


def test_a_node_learns_its_observed_address_and_nat_kind():
    sw = swarm()
    sw.run_for(10)
    kinds = [n.engine.nat.kind for n in sw.nodes]
    assert kinds == [NatKind.OPEN] * 3 + [NatKind.NAT] * 2 + [NatKind.SYMMETRIC]
    cone = sw.nodes[3]
    assert cone.engine.nat_status()["observed"] == (cone.nat.ip, cone.nat.by_remote[None])
    assert sw.nodes[0].engine.nat_status()["observed"] == sw.nodes[0].addr
    # The public nodes, which everyone talks to, hold what each announces (it rides in every
    # datagram's header).
    for a in range(3):
        for b in range(6):
            if a != b:
                assert member(sw, a, b).nat == kinds[b]


def test_no_false_dead_behind_nat_and_full_delivery():
    sw = swarm(n=12, nat={6: "cone", 7: "cone", 8: "cone", 9: "cone", 10: "symmetric", 11: "symmetric"},
               net=WAN)
    for node in sw.nodes:
        sw.schedule(3.0, sw.set_publishing, node, 2.0)
    sw.run_for(60)
    for node in sw.nodes:
        sw.set_publishing(node, 0)
    sw.run_for(20)
    assert sw.deaths == []
    assert sw.converged()
    assert all(n.engine.book.contiguous(n.engine.node_id) > 50 for n in sw.nodes)
    for node in sw.nodes:
        assert sum(p.state == "alive" for p in node.engine.peers()) == 11
    assert sw.stats["nat_dropped"] > 0          # the NATs did drop unsolicited datagrams


def test_cone_nodes_punch_a_direct_path_through_an_introducer():
    sw = swarm()
    sw.run_for(20)
    a, b = member(sw, 3, 4), member(sw, 4, 3)
    assert a.path.relay is None and b.path.relay is None
    assert a.path.until > sw.now and b.path.until > sw.now
    assert a.addr == (sw.nodes[4].nat.ip, sw.nodes[4].nat.by_remote[None])
    assert sum(n.engine.counters["introductions"] for n in sw.nodes[:3]) >= 1
    assert sw.nodes[3].engine.counters["punches_ok"] + sw.nodes[4].engine.counters["punches_ok"] >= 1


def test_symmetric_nat_falls_back_to_a_relay_that_cannot_alter_datagrams():
    sw = swarm()
    sw.run_for(20)
    sym, cone = sw.nodes[5], sw.nodes[3]
    via = member(sw, 5, 3).path.relay
    assert via is not None and member(sw, 3, 5).path.relay is not None
    assert via in {n.engine.node_id for n in sw.nodes[:3]}
    assert sym.engine.counters["relay_sent_bytes"] > 0 and cone.engine.counters["relay_received_bytes"] > 0
    relay = next(n for n in sw.nodes if n.engine.node_id == via)
    assert relay.engine.counters["relay_forwarded_bytes"] > 0
    # The relay re-seals a datagram of the symmetric node with one bit flipped: the cone node
    # holds the pair key it was sealed under, the relay does not, so it is dropped.
    inner = bytearray()
    sym.engine.outbox.send(msg.Ping(7), member(sw, 5, 3), [], [], addr=("x", 1))
    inner += sym.engine.outbox.drain()[-1][0]
    inner[-20] ^= 1
    dest = relay.engine.members.get(cone.engine.node_id)
    relay.engine.outbox.send(msg.Relay(False, sym.engine.node_id, bytes(inner)), dest, [], [])
    data, _ = relay.engine.outbox.drain()[-1]
    before = dict(cone.engine.counters["drops"])
    cone.engine.receive_datagram(data, relay.addr, sw.now)
    assert cone.engine.counters["drops"].get("bad_mac", 0) == before.get("bad_mac", 0) + 1


def test_a_relay_carries_only_its_senders_own_datagrams():
    sw = swarm()
    sw.run_for(20)
    pub, cone, sym = sw.nodes[0], sw.nodes[3], sw.nodes[5]
    # cone asks pub to forward a datagram that sym sealed: refused (and counted).
    sym.engine.outbox.send(msg.Ping(9), member(sw, 5, 0), [], [], addr=("x", 1))
    foreign = sym.engine.outbox.drain()[-1][0]
    cone.engine.outbox.send(msg.Relay(True, pub.engine.node_id, foreign), member(sw, 3, 0),
                            [], [], addr=pub.engine.members.get(cone.engine.node_id).addr)
    data, _ = cone.engine.outbox.drain()[-1]
    out_before = len(pub.engine.outbox.datagrams)
    pub.engine.receive_datagram(data, pub.engine.members.get(cone.engine.node_id).addr, sw.now)
    assert pub.engine.counters["drops"].get("malformed", 0) >= 1
    assert len(pub.engine.outbox.datagrams) == out_before


def test_keepalive_holds_the_mapping_open_through_quiet_minutes():
    sw = swarm(nat_timeout_s=30.0)
    sw.run_for(200)                       # nothing published: only protocol traffic
    cone = sw.nodes[3]
    anchors = cone.engine.nat.anchors
    assert anchors and KEEPALIVE_S < 30.0
    for nid in anchors:
        holder = next(n for n in sw.nodes if n.engine.node_id == nid)
        assert holder.engine.members.get(cone.engine.node_id).path.until > sw.now
    assert sw.deaths == []


def test_sim_nat_filters_like_a_port_restricted_nat():
    cone, sym = SimNat("cone", "203.0.0.1", 30.0), SimNat("symmetric", "203.0.0.2", 30.0)
    a, b = ("10.0.0.1", 7000), ("10.0.0.2", 7000)
    pa = cone.outbound(a, 0.0)
    assert cone.outbound(b, 1.0) == pa                        # one mapping for every remote
    assert cone.inbound(pa[1], a, 2.0) and not cone.inbound(pa[1], ("10.0.0.3", 7000), 2.0)
    assert not cone.inbound(pa[1], a, 31.5)                   # expired
    assert sym.outbound(a, 0.0) != sym.outbound(b, 0.0)       # a port per remote
    with pytest.raises(ValueError):
        SimNat("full", "203.0.0.3", 30.0)


def test_wire_carries_nat_kind_in_alive_items_and_headers():
    cert = bytes(140)
    assert decode_gossip([0, cert, ["1.2.3.4", 5], 2]) == Alive(cert, ("1.2.3.4", 5), NatKind.SYMMETRIC)
    assert decode_gossip([0, cert, None]).nat == NatKind.OPEN
    with pytest.raises(WireError):
        decode_gossip([0, cert, None, 7])
    assert encode_alive(cert, None) == packb([0, cert, None])   # OPEN: the old 3-element item
    head = pack_header(1, b"t" * 8, MessageType.PING, b"s" * 16, 1, None, NatKind.NAT)
    h = parse_header(head + b"\x93\xc0\x90\x90" + bytes(16), 1, b"t" * 8, 1200)
    assert nat_of_flags(h.flags) == NatKind.NAT
