"""Membership gossip: the item codecs (docs/protocol.md, "Gossip items") and the Change values
the membership table returns for the engine to hand on."""
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from onebyte.protocol import Identity, PeerAlive, PeerDead, PeerJoined, PeerLeft, PeerSuspected, ProtocolConfig
from onebyte.protocol.identity import make_cert
from onebyte.protocol.membership import Change, Membership, MemberState
from onebyte.protocol.session import Cert
from onebyte.protocol.testing import SWARM
from onebyte.protocol.wire import (Alive, Dead, GossipKind, Leave, Suspect, WireError, decode_gossip,
                                   encode_alive, encode_dead, encode_leave, encode_suspect)


def unpack(packed: bytes):
    return msgpack.unpackb(packed, raw=False)


def cert_of(seed: int, generation: int = 0, incarnation: int = 0) -> Cert:
    ident = Identity.from_seed(seed)
    raw = make_cert(ident, SWARM, b"x" * 32, generation, incarnation)
    return Cert(ident.node_id, ident.public_bytes(), b"x" * 32, generation, incarnation, raw)


def test_gossip_kinds_are_wire_format():
    assert {k.name: int(k) for k in GossipKind} == {"ALIVE": 0, "SUSPECT": 1, "DEAD": 2, "LEAVE": 3,
                                                "PROOF": 4, "TAG": 5, "AMEND": 6}


@given(st.binary(min_size=16, max_size=16), st.integers(0, 2 ** 32 - 1))
def test_accusations_roundtrip(node_id, inc):
    assert unpack(encode_suspect(node_id, inc)) == [1, node_id, inc]
    assert unpack(encode_dead(node_id, inc)) == [2, node_id, inc]
    assert decode_gossip(unpack(encode_suspect(node_id, inc))) == Suspect(node_id, inc)
    assert decode_gossip(unpack(encode_dead(node_id, inc))) == Dead(node_id, inc)


def test_alive_and_leave_roundtrip():
    cert, addr = bytes(range(140)), ("fd00::1", 7000, 0, 3)
    assert unpack(encode_alive(cert, addr)) == [0, cert, list(addr)]
    assert decode_gossip(unpack(encode_alive(cert, addr))) == Alive(cert, addr)
    assert decode_gossip(unpack(encode_alive(cert, None))) == Alive(cert, None)
    assert decode_gossip([0, cert, ["h" * 100, 1]]) == Alive(cert, None)   # a bad address is none
    assert decode_gossip(unpack(encode_alive(cert, None, 0, "onebyte 0.1.0"))) == Alive(cert, None, 0, "onebyte 0.1.0")
    assert unpack(encode_alive(cert, None, 0, "v" * 40))[4] == "v" * 32   # cut to MAX_VERSION
    node_id, sig = b"n" * 16, b"s" * 64
    assert unpack(encode_leave(node_id, 7, 2, sig)) == [3, node_id, 7, 2, sig]
    assert decode_gossip(unpack(encode_leave(node_id, 7, 2, sig))) == Leave(node_id, 7, 2, sig)


@pytest.mark.parametrize("item, reason", [
    (None, "malformed"), ([], "malformed"), ([-1], "malformed"), ([True, b"x", 0], "malformed"),
    ([0, b"short", None], "malformed"), ([0, bytes(140)], "malformed"),
    ([1, b"n" * 15, 0], "malformed"), ([2, b"n" * 16, 2 ** 32], "malformed"),
    ([3, b"n" * 16, 1, 1, b"s" * 63], "malformed"), ([3, b"n" * 16, -1, 1, b"s" * 64], "malformed"),
    ([4, b"n" * 16, 0], "malformed"), ([4, b"a"], "malformed"), ([7, b"n" * 16, 0], "unknown_type"), ([6, b"n" * 16, 0], "malformed"), ([5, b"n" * 16, 0], "malformed"),
    ([0, bytes(140), None, 0, 7], "malformed"), ([0, bytes(140), None, 0, ""], "malformed"),
    ([0, bytes(140), None, 0, "v" * 33], "malformed"), ([0, bytes(140), None, 0, "a\nb"], "malformed"),
])
def test_bad_items_rejected(item, reason):
    with pytest.raises(WireError) as e:
        decode_gossip(item)
    assert e.value.reason == reason


def test_membership_transitions_come_back_as_values():
    cfg = ProtocolConfig(swarm_id=SWARM)
    table = Membership(cfg)
    a, addr = cert_of(1), ("10.0.0.1", 7000)
    m, change = table.on_cert(a, addr, 0.0, direct=True)
    assert change == Change(a.node_id, PeerJoined(a.node_id, addr), encode_alive(a.raw, addr))
    assert table.on_cert(a, addr, 1.0, direct=True) == (m, None)          # nothing new
    change = table.on_suspect(a.node_id, 0, 2.0)
    assert change == Change(a.node_id, PeerSuspected(a.node_id), encode_suspect(a.node_id, 0))
    refuted = cert_of(1, incarnation=1)
    assert table.on_cert(refuted, None, 3.0, direct=False) == (
        m, Change(a.node_id, PeerAlive(a.node_id), encode_alive(refuted.raw, addr)))
    assert table.on_suspect(a.node_id, 0, 4.0) is None                    # an older incarnation
    change = table.on_leave(m, 0, 1, b"s" * 64, 5.0)
    assert change == Change(a.node_id, PeerLeft(a.node_id), encode_leave(a.node_id, 0, 1, b"s" * 64))
    assert table.on_leave(m, 0, 1, b"s" * 64, 6.0) is None and m.state == MemberState.LEFT

    b = cert_of(2)
    table.on_cert(b, ("10.0.0.2", 7000), 10.0, direct=True)
    table.on_suspect(b.node_id, 0, 10.0)
    later = 10.0 + cfg.dead_forget_s
    assert table.expire(later) == [Change(b.node_id, PeerDead(b.node_id), encode_dead(b.node_id, 0))]
    assert a.node_id not in table.members                                 # left long ago: forgotten
    assert table.live_count() == 0


def test_a_leave_is_regossiped_with_the_generation_it_was_signed_over():
    """A member we hold at generation 0 restarted (generation 5) and left before its new
    certificate reached us: relaying its LEAVE with our generation would break the signature."""
    table = Membership(ProtocolConfig(swarm_id=SWARM))
    a = cert_of(1)
    m, _ = table.on_cert(a, ("10.0.0.1", 7000), 0.0, direct=True)
    change = table.on_leave(m, 5, 0, b"s" * 64, 1.0)
    assert decode_gossip(unpack(change.gossip)) == Leave(a.node_id, 5, 0, b"s" * 64)


def test_members_learn_each_others_software_version_through_alive_gossip():
    """A node announces its version in its own ALIVE item; peers that learn it only through
    a third node's relaying (c never talks to a directly first) still see it."""
    from onebyte.protocol.testing import Net
    net = Net(ProtocolConfig(swarm_id=SWARM))
    a = net.add(1, software="onebyte 9.9")
    net.add(2, bootstrap=[("10.0.0.1", 7000)], software="onebyte 1.0")
    c = net.add(3, bootstrap=[("10.0.0.2", 7000)])    # an engine that announces no version
    net.advance(20)
    versions = {p.node_id: p.version for p in c.peers()}
    assert versions == {a.node_id: "onebyte 9.9", net.engines[("10.0.0.2", 7000)].node_id: "onebyte 1.0"}
    assert {p.version for p in a.peers()} == {"onebyte 1.0", None}


def test_a_restarted_member_is_assumed_to_hold_no_certificate():
    """What a member was known to hold (so not sent again) is forgotten when it restarts with a
    new generation: it may have lost them all, and would never learn its peers back."""
    table = Membership(ProtocolConfig(swarm_id=SWARM))
    m, _ = table.on_cert(cert_of(1), ("10.0.0.1", 7000), 0.0, direct=True)
    m.known[b"n" * 16] = b"t" * 9
    table.on_cert(cert_of(1, incarnation=1), None, 1.0, direct=False)
    assert m.known == {b"n" * 16: b"t" * 9}          # a refutation: same process, same memory
    table.on_cert(cert_of(1, generation=1), ("10.0.0.9", 7000), 2.0, direct=True)
    assert m.known == {}
