"""Every malformed, truncated, flipped, forged or foreign datagram is a counted drop:
receive_datagram never raises and the engine's state does not change."""
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onebyte.protocol import Engine, Identity, ProtocolConfig
from onebyte.protocol.identity import mac
from onebyte.protocol.testing import SWARM, Net, state_of
from onebyte.protocol.wire import MessageType, pack_header

SRC = ("10.0.0.66", 7000)


def total_drops(eng):
    return sum(eng.counters["drops"].values())


@pytest.fixture(scope="module")
def scene():
    """b, with a handful of valid datagrams addressed to it that it has not seen yet."""
    net = Net(ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5))
    a = net.add(1)
    a_addr = net.addr_of[a.node_id]
    b = net.add(2, bootstrap=[a_addr])
    c = net.add(3, bootstrap=[a_addr])
    net.deliver()
    net.advance(3.0)
    b_addr = net.addr_of[b.node_id]
    pending = []

    def hold(data, src, dst):
        if dst == b_addr:
            pending.append((data, src))
            return True
        return False

    for s in range(1, 6):
        a.publish(s, s - 3, net.now)
    net.advance(1.2, drop=hold)
    newcomer = net.add(4, bootstrap=[b_addr])   # its JOIN stays on the wire
    join = [(d, src) for d, src, dst in net.wire if dst == b_addr]
    net.wire.clear()
    kinds = {d[9] for d, _ in pending + join}
    assert {MessageType.JOIN, MessageType.PUSH, MessageType.PING} <= kinds or len(kinds) >= 3
    # b must drop everything below without changing: freeze its timers by never calling them.
    return net, b, pending + join, c, newcomer


def check_dropped(b, data, src):
    before, drops = state_of(b), total_drops(b)
    b.receive_datagram(data, src, 123.0)
    assert total_drops(b) == drops + 1, data
    assert state_of(b) == before
    assert b.counters["internal_errors"] == 0


def test_every_truncation_is_dropped(scene):
    net, b, valid, _, _ = scene
    for data, src in valid:
        for n in range(len(data)):
            check_dropped(b, data[:n], src)


def test_every_single_bit_flip_is_dropped(scene):
    net, b, valid, _, _ = scene
    for data, src in valid:
        for i in range(len(data)):
            for bit in range(8):
                flipped = bytearray(data)
                flipped[i] ^= 1 << bit
                check_dropped(b, bytes(flipped), src)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(max_size=1400))
def test_arbitrary_bytes_dropped(scene, data):
    net, b, _, _, _ = scene
    check_dropped(b, data, SRC)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.sampled_from([int(t) for t in MessageType] + [0, 13, 255]), st.integers(0, 3),
       st.binary(min_size=16, max_size=16), st.integers(0, 2 ** 64 - 1), st.binary(max_size=1200))
def test_valid_header_garbage_rest_dropped(scene, mtype, flags, sender, counter, rest):
    net, b, _, _, _ = scene
    cfg = net.config
    head = bytes([cfg.protocol_version]) + cfg.swarm_tag + bytes([mtype, flags]) + sender \
        + counter.to_bytes(8, "little")
    check_dropped(b, head + rest, SRC)


def test_valid_datagrams_are_accepted_after_all_that(scene):
    """The mutated copies above did not poison b: the originals still go through (later, once
    the certificate-verification budget that the flipped certificates used up has refilled)."""
    net, b, valid, _, _ = scene
    for data, src in valid:
        drops = total_drops(b)
        b.receive_datagram(data, src, 200.0)
        assert total_drops(b) == drops, data[9]
    assert b.counters["internal_errors"] == 0


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.binary(max_size=200)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=6), max_leaves=30)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.sampled_from([int(t) for t in MessageType if t != MessageType.JOIN]), msgpack_values)
def test_authenticated_garbage_never_raises(mtype, body):
    """A member that MACs nonsense: counted drops, never an exception or internal error."""
    net = Net(ProtocolConfig(swarm_id=SWARM))
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    m = b.members.members[a.node_id]
    try:
        packed = msgpack.packb(body, use_bin_type=True)
    except Exception:
        return
    data = pack_header(1, net.config.swarm_tag, mtype, b.node_id, 10_000, None) + packed
    data += mac(m.channel.mac_key, data)
    a.receive_datagram(data[:1200], net.addr_of[b.node_id], 1.0)
    assert a.counters["internal_errors"] == 0


def test_oversize_dropped():
    a = Engine(Identity.from_seed(1), ProtocolConfig(swarm_id=SWARM), rng=random.Random(1), now=0.0)
    a.receive_datagram(bytes(1201), SRC, 0.0)
    assert a.counters["drops"] == {"oversize": 1}
