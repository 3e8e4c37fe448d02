"""Engine behaviour over the fake network (tests/protocol/conftest.py): no sockets, no sleeps."""
import random

import pytest

from onebyte.protocol import messages as msg
from onebyte.protocol import (DatagramDropped, Engine, EquivocationDetected, Identity,
                              MemoryRecordStore, PeerDead, PeerJoined, PeerLeft, PeerSuspected,
                              ProtocolConfig, ProtocolError, UpdatesReceived)
from onebyte.protocol.records import qs_to_bytes, record_message
from onebyte.protocol.wire import MessageType, encode_record, packb, parse_header

from onebyte.protocol.testing import SWARM, Net


def mtype(data):
    return data[9]


def join(net, n=2, **kw):
    engines = [net.add(1, **kw)]
    first = net.addr_of[engines[0].node_id]
    for seed in range(2, n + 1):
        engines.append(net.add(seed, bootstrap=[first], **kw))
    net.deliver()
    net.advance(1.0)
    return engines


def updates(net, eng, origin):
    out = []
    for ev in net.of_type(net.addr_of[eng.node_id], UpdatesReceived):
        if ev.origin == origin:
            out.extend(ev.updates())
    return out


def test_join_handshake(net):
    a, b = join(net)
    assert [(p.node_id, p.state) for p in a.peers()] == [(b.node_id, "alive")]
    assert [(p.node_id, p.state) for p in b.peers()] == [(a.node_id, "alive")]
    assert [e.node_id for e in net.of_type(net.addr_of[a.node_id], PeerJoined)] == [b.node_id]
    assert a.counters["drops"] == {} and b.counters["drops"] == {}


def test_join_answer_never_larger_than_join(net):
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    (join_dgram, _, _), = net.wire
    assert mtype(join_dgram) == MessageType.JOIN
    net.deliver()
    hello = [d for d, src, _ in net.log if mtype(d) == MessageType.HELLO]
    assert hello and all(len(h) <= len(join_dgram) for h in hello)
    assert len(join_dgram) <= 1200


def test_peer_exchange_finds_everyone_from_one_address(net):
    engines = join(net, n=5)
    net.advance(5.0)
    for e in engines:
        assert {p.node_id for p in e.peers() if p.state == "alive"} == \
            {o.node_id for o in engines if o is not e}


def test_updates_delivered_exactly_once_in_order(net):
    a, b, c = join(net, n=3)
    qs = [5, -7, 127, -127, 0, 1, 2, 3, 4, 9]
    for step, q in enumerate(qs, 1):
        a.publish(step, q, net.now)
    net.advance(3.0)
    for e in (b, c):
        assert updates(net, e, a.node_id) == [(a.node_id, s, q) for s, q in enumerate(qs, 1)]
        assert e.version_vector()[a.node_id] == 10
        assert e.store.version_vector()[a.node_id] == 10


def test_out_of_order_records_held_until_gap_fills(net):
    a, b = join(net)
    b_addr = net.addr_of[b.node_id]
    held = []

    def capture(data, src, dst):
        if dst == b_addr and mtype(data) in (MessageType.PUSH, MessageType.RECORDS):
            held.append(data)
            return True
        return False

    for s in range(1, 5):
        a.publish(s, s, net.now)
    net.advance(0.5, drop=capture)
    first = list(held)
    held.clear()
    for s in range(5, 9):
        a.publish(s, -s, net.now)
    net.advance(0.5, drop=capture)
    sig1 = a.store.get(a.node_id, 1, 10_000)[0][-64:]   # record 1's signature
    second = [d for d in held if sig1 not in d]
    first = [d for d in first + held if sig1 in d]
    assert first and second
    for d in second:
        b.receive_datagram(d, net.addr_of[a.node_id], net.now)
    net.collect(b_addr)
    assert updates(net, b, a.node_id) == []
    assert b.pending_updates() == 4
    for d in first:
        b.receive_datagram(d, net.addr_of[a.node_id], net.now)
    net.collect(b_addr)
    got = updates(net, b, a.node_id)
    assert [s for _, s, _ in got] == list(range(1, 9))
    assert [q for _, _, q in got] == [1, 2, 3, 4, -5, -6, -7, -8]
    assert b.pending_updates() == 0


def test_forged_record_dropped(net):
    a, b, c = join(net, n=3)
    # c (a member) relays a record claiming to be a's, with a bad signature.
    forged = encode_record(a.identity.public_bytes(), 1, qs_to_bytes([9, 9]), bytes(64))
    c.outbox.send(msg.Push(), c.members.members[b.node_id], [], [packb(forged)])
    net.collect(net.addr_of[c.node_id])
    net.deliver()
    assert b.counters["drops"].get("bad_signature") == 1
    assert updates(net, b, a.node_id) == []
    assert a.node_id not in b.version_vector()


def test_replayed_control_datagram_dropped(net, snapshot):
    a, b = join(net)
    pings = [(d, src) for d, src, dst in net.log
             if dst == net.addr_of[b.node_id] and mtype(d) in (MessageType.PING, MessageType.ACK)]
    assert pings
    data, src = pings[0]
    before = snapshot(b)
    b.receive_datagram(data, src, net.now)
    assert b.counters["drops"]["replayed"] == 1
    assert snapshot(b) == before


def test_foreign_swarm_and_version_dropped(net):
    a = net.add(1)
    other = Net(ProtocolConfig(swarm_id=bytes(32)))
    x = other.add(5, bootstrap=[net.addr_of[a.node_id]])
    newer = Net(ProtocolConfig(swarm_id=SWARM, protocol_version=2))
    y = newer.add(6, bootstrap=[net.addr_of[a.node_id]])
    for data, _, _ in other.wire + newer.wire:
        a.receive_datagram(data, ("10.9.9.9", 1), net.now)
    assert a.counters["drops"] == {"wrong_swarm": 1, "wrong_version": 1}
    assert a.peers() == [] and x and y


def test_closed_swarm_admits_only_listed_keys():
    keys = [Identity.from_seed(s).public_bytes() for s in (1, 2)]
    cfg = ProtocolConfig(swarm_id=SWARM, admission="closed", members=frozenset(keys))
    net = Net(cfg)
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    intruder = net.add(3, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    net.advance(2.0)
    assert {p.node_id for p in a.peers()} == {b.node_id}
    assert a.counters["drops"].get("not_admitted", 0) >= 1
    assert intruder.peers() == []
    # A member relaying the intruder's (validly signed) record does not get it admitted.
    sig = intruder.identity.sign(record_message(SWARM, intruder.node_id, 1, b"\x01"))
    rec = encode_record(intruder.identity.public_bytes(), 1, b"\x01", sig)
    b.outbox.send(msg.Push(), b.members.members[a.node_id], [], [packb(rec)])
    net.collect(net.addr_of[b.node_id])
    net.deliver()
    assert intruder.node_id not in a.version_vector()


def test_equivocation_detected(net):
    a, b, c = join(net, n=3)
    for s in range(1, 5):
        a.publish(s, 1, net.now)
    net.advance(1.0)
    assert b.version_vector()[a.node_id] == 4
    other_qs = qs_to_bytes([2, 2, 2, 2])
    sig = a.identity.sign(record_message(SWARM, a.node_id, 1, other_qs))
    rec = encode_record(a.identity.public_bytes(), 1, other_qs, sig)
    c.outbox.send(msg.Push(), c.members.members[b.node_id], [], [packb(rec)])
    net.collect(net.addr_of[c.node_id])
    net.deliver()
    eq = net.of_type(net.addr_of[b.node_id], EquivocationDetected)
    assert len(eq) == 1 and eq[0].origin == a.node_id and (eq[0].first_step, eq[0].last_step) == (1, 4)
    assert [q for _, _, q in updates(net, b, a.node_id)] == [1, 1, 1, 1]  # first accepted stays


def test_restart_restores_version_vector_and_own_steps(net):
    a, b = join(net)
    for s in range(1, 9):
        a.publish(s, s, net.now)
    net.advance(2.0)
    store_a, store_b = a.store, b.store
    b2 = Engine(Identity.from_seed(2), net.config, rng=random.Random(9), now=net.now, store=store_b,
                generation=1)
    assert b2.version_vector()[a.node_id] == 8
    a2 = Engine(Identity.from_seed(1), net.config, rng=random.Random(9), now=net.now, store=store_a,
                generation=1)
    assert a2.next_own_step == 9 and list(a2.own_steps_to_republish) == []
    a3 = Engine(Identity.from_seed(1), net.config, rng=random.Random(9), now=net.now, store=store_a,
                generation=2, own_last_step=10)
    assert a3.next_own_step == 9 and list(a3.own_steps_to_republish) == [9, 10]
    with pytest.raises(ProtocolError):
        Engine(Identity.from_seed(1), net.config, rng=random.Random(9), now=net.now, store=store_a,
               generation=3, own_last_step=5)


def test_restarted_node_catches_up_without_redelivery(net):
    a, b, c = join(net, n=3)
    for s in range(1, 9):
        a.publish(s, s, net.now)
    net.advance(2.0)
    c_addr = net.addr_of[c.node_id]
    del net.engines[c_addr]           # c crashes; its store survives
    for s in range(9, 17):
        a.publish(s, -s, net.now)
    net.advance(2.0)
    net.events[c_addr] = []
    c2 = net.add(3, addr=c_addr, store=c.store, generation=1, bootstrap=[net.addr_of[a.node_id]])
    net.advance(8.0)
    assert c2.version_vector()[a.node_id] == 16
    assert [s for _, s, _ in updates(net, c2, a.node_id)] == list(range(9, 17))


def test_rate_cap_then_anti_entropy_completes(config):
    cfg = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5,
                         max_updates_per_s_per_origin=1.0, rate_burst_s=4.0)
    net = Net(cfg)
    a, b = join(net)
    for s in range(1, 41):
        a.publish(s, 3, net.now)
    net.advance(1.0)
    assert b.counters["drops"].get("rate_limited", 0) > 0
    net.advance(20.0)
    assert b.version_vector()[a.node_id] == 40
    assert [s for _, s, _ in updates(net, b, a.node_id)] == list(range(1, 41))


def test_graceful_leave(net):
    a, b, c = join(net, n=3)
    a.leave(net.now)
    net.collect(net.addr_of[a.node_id])
    net.advance(1.0)
    for e in (b, c):
        assert [ev.node_id for ev in net.of_type(net.addr_of[e.node_id], PeerLeft)] == [a.node_id]
    with pytest.raises(ProtocolError):
        a.publish(1, 1, net.now)
    assert a.get_timer() is None


def test_leave_reaches_a_node_only_through_a_relay(net):
    """b re-gossips a's signed LEAVE as it got it: c, cut off from a, still learns it."""
    a, b, c = join(net, n=3)
    a_addr, c_addr = net.addr_of[a.node_id], net.addr_of[c.node_id]

    def cut(data, src, dst):
        return {src, dst} == {a_addr, c_addr}

    a.leave(net.now)
    net.collect(a_addr)
    net.advance(2.0, drop=cut)
    assert [ev.node_id for ev in net.of_type(c_addr, PeerLeft)] == [a.node_id]
    assert {p.node_id: p.state for p in c.peers()}[a.node_id] == "left"
    assert "bad_signature" not in c.counters["drops"]


def test_every_authenticated_message_type_has_one_handler(net):
    a = net.add(1)
    assert set(a._handlers) == set(MessageType) - {MessageType.JOIN}


def test_crashed_peer_suspected_dead_forgotten_and_back(config):
    cfg = ProtocolConfig(swarm_id=SWARM, dead_forget_s=10.0)
    net = Net(cfg)
    a, b, c = join(net, n=3)
    c_addr = net.addr_of[c.node_id]
    del net.engines[c_addr]
    net.advance(12.0)
    a_addr = net.addr_of[a.node_id]
    assert [e.node_id for e in net.of_type(a_addr, PeerSuspected)] == [c.node_id]
    assert [e.node_id for e in net.of_type(a_addr, PeerDead)] == [c.node_id]
    net.advance(12.0)
    assert c.node_id not in {p.node_id for p in a.peers()}
    net.add(3, addr=c_addr, generation=1, bootstrap=[a_addr])
    net.advance(3.0)
    assert {p.node_id: p.state for p in a.peers()}[c.node_id] == "alive"
    assert [e.node_id for e in net.of_type(a_addr, PeerJoined)].count(c.node_id) == 2


def test_indirect_probe_keeps_peer_alive(net):
    a, b, c = join(net, n=3)
    a_addr, c_addr = net.addr_of[a.node_id], net.addr_of[c.node_id]

    def cut(data, src, dst):  # a and c cannot reach each other directly
        return {src, dst} == {a_addr, c_addr}

    net.advance(15.0, drop=cut)
    assert net.of_type(a_addr, PeerSuspected) == []
    assert {p.node_id: p.state for p in a.peers()}[c.node_id] == "alive"


def test_ipv6_addresses(net):
    a = net.add(1, addr=("fd00::1", 7000, 0, 0))
    b = net.add(2, addr=("fd00::2", 7000, 0, 0), bootstrap=[("fd00::1", 7000, 0, 0)])
    c = net.add(3, bootstrap=[("fd00::2", 7000, 0, 0)])
    net.deliver()
    net.advance(4.0)
    assert {p.addr for p in c.peers()} == {("fd00::1", 7000, 0, 0), ("fd00::2", 7000, 0, 0)}
    assert b and a


def test_publish_misuse_raises(net):
    a = net.add(1)
    with pytest.raises(ProtocolError):
        a.publish(2, 0, net.now)
    with pytest.raises(ValueError):
        a.publish(1, 128, net.now)
    a.publish(1, -127, net.now)
    assert a.next_own_step == 2


def test_drop_events_bounded_but_counted(config):
    cfg = ProtocolConfig(swarm_id=SWARM, max_drop_events=16)
    a = Engine(Identity.from_seed(1), cfg, rng=random.Random(1), now=0.0)
    for i in range(500):
        a.receive_datagram(bytes([1]) + i.to_bytes(4, "little"), ("10.0.0.9", 1), 0.0)
    assert sum(a.counters["drops"].values()) == 500
    events = []
    ev = a.next_event()
    while ev is not None:
        events.append(ev)
        ev = a.next_event()
    assert len(events) == 16 and all(isinstance(e, DatagramDropped) for e in events)
    assert a.counters["events_dropped"] == 484


def test_backpressure_when_events_not_drained():
    cfg = ProtocolConfig(swarm_id=SWARM, updates_per_record=1, record_linger_s=0.1, max_events=5)
    net = Net(cfg)
    a, b = join(net)
    b_addr = net.addr_of[b.node_id]
    while b.next_event() is not None:
        pass
    net.nodrain.add(b_addr)
    for s in range(1, 21):
        a.publish(s, 1, net.now)
        net.advance(0.2)
    assert b.counters["drops"].get("backpressure", 0) > 0
    assert len(b.events.high) <= 5 + 2  # membership events may still queue
    net.nodrain.discard(b_addr)
    for _ in range(40):
        net.collect(b_addr)
        net.advance(0.5)
    assert b.version_vector()[a.node_id] == 20
    assert [s for _, s, _ in updates(net, b, a.node_id)] == list(range(1, 21))


def test_join_flood_is_bounded_by_the_verification_budget():
    cfg = ProtocolConfig(swarm_id=SWARM, cert_verifies_per_s=50.0)
    victim = Engine(Identity.from_seed(1), cfg, rng=random.Random(1), now=0.0)
    joins = []
    for seed in range(100, 160):
        e = Engine(Identity.from_seed(seed), cfg, rng=random.Random(seed), now=0.0, bootstrap=[("v", 1)])
        joins += [d for d, _ in e.datagrams_to_send(0.0)]
    for i, data in enumerate(joins):
        victim.receive_datagram(data, ("10.1.0.1", 1000 + i), 0.0)
    drops = victim.counters["drops"]
    # Each JOIN costs two verifications (certificate, datagram); the bucket holds 2 * 50.
    assert drops.get("rate_limited", 0) > 0
    assert len(victim.peers()) <= 50
    out = victim.datagrams_to_send(0.0)
    assert sum(len(d) for d, _ in out) < sum(len(d) for d in joins)   # never amplifies


def test_join_answer_never_larger_than_join_even_to_the_longest_address(net):
    """The HELLO echoes the JOIN's source address: the longest one a receiver accepts (a
    64-character host, with flow info and scope) still fits under the JOIN's padding."""
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    (join_dgram, _, _), = net.wire
    net.wire.clear()
    far = ("f" * 64, 65535, 2 ** 32 - 1, 2 ** 32 - 1)
    a.receive_datagram(join_dgram, far, net.now)
    hello = [d for d, _ in a.datagrams_to_send(net.now) if mtype(d) == MessageType.HELLO]
    assert hello and all(len(h) <= len(join_dgram) for h in hello)
