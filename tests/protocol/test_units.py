"""Building blocks: replay window, record store, transmit queue, wire codecs, purity of the room."""
import ast
import pathlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onebyte.protocol import ProtocolConfigError, Identity, MemoryRecordStore, ProtocolConfig, node_id_of
from onebyte.protocol.dissemination import TransmitLimitedQueue, VersionDigest
from onebyte.protocol.identity import CryptoCache, make_cert, parse_cert
from onebyte.protocol.records import bytes_to_qs, qs_to_bytes
from onebyte.protocol.replay_window import ReplayWindow
from onebyte.protocol.testing import SWARM
from onebyte.protocol.wire import (MessageType, WireError, decode_addr, decode_record, encode_record,
                                   leb128)

PROTOCOL_DIR = pathlib.Path(__file__).resolve().parents[2] / "protocol"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5000), max_size=300))
def test_replay_window_matches_model(counters):
    """Accept iff new and within `size` of the highest accepted (a set-based model)."""
    w, seen, top = ReplayWindow(size=64), set(), 0
    for c in counters:
        expect = c not in seen and c > top - 64
        assert w.accept(c) == expect
        if expect:
            seen.add(c)
            top = max(top, c)


def test_replay_window_rejects_zero_and_old():
    w = ReplayWindow(size=8)
    assert not w.accept(0)
    assert w.accept(100) and not w.accept(100)
    assert not w.accept(92) and w.accept(93)


def test_memory_store_version_vector_and_get():
    s = MemoryRecordStore()
    o = b"o" * 16
    s.add(o, 5, 8, b"r5")
    assert s.version_vector() == {o: 0}
    s.add(o, 1, 4, b"r1")
    assert s.version_vector() == {o: 8}
    s.add(o, 1, 4, b"r1")   # idempotent
    assert s.get(o, 1, 100) == [b"r1", b"r5"]
    assert s.get(o, 6, 100) == [b"r5"]
    assert s.get(o, 1, 1) == [b"r1"]      # at least one record even over the limit
    assert s.get(o, 9, 100) == [] and s.get(b"x" * 16, 1, 100) == []
    with pytest.raises(ValueError):
        s.add(o, 9, 8, b"bad")


def test_transmit_limited_queue_limits_and_order():
    q = TransmitLimitedQueue(max_items=10)
    q.push("a", b"A" * 10)
    q.push("b", b"B" * 10)
    assert q.take(100, limit=2) == [b"B" * 10, b"A" * 10]   # newest first
    assert q.take(15, limit=2) == [b"B" * 10]                # budget
    assert q.take(100, limit=2) == [b"A" * 10]
    assert len(q) == 0                                       # both sent twice
    q.push("c", b"C")
    q.push("c", b"C2")                                       # invalidates the older item
    assert q.take(100, limit=5) == [b"C2"]
    sent = {"c"}
    assert q.take(100, limit=5, sent=sent) == []             # never twice to one peer
    for i in range(20):
        q.push(i, b"x")
    assert len(q) == 10


def test_version_digest_detects_differences():
    a, b = VersionDigest(), VersionDigest()
    o1, o2 = bytes([1]) * 16, bytes([2]) * 16
    a.update(o1, 0, 5)
    b.update(o1, 0, 5)
    assert a.differing(b.packed()) == []
    a.update(o1, 5, 6)
    b.update(o2, 0, 1)
    assert sorted(a.differing(b.packed())) == sorted({o1[0] % 64, o2[0] % 64})


@given(st.integers(1, 2 ** 53 - 1), st.lists(st.integers(-127, 127), min_size=1, max_size=300),
       st.booleans())
def test_record_codec_roundtrip(first, qs, with_key):
    pub = bytes(range(32)) if with_key else None
    raw = qs_to_bytes(qs)
    rec = encode_record(pub, first, raw, b"s" * 64)
    assert decode_record(rec) == (pub, first, raw, b"s" * 64)
    assert bytes_to_qs(raw) == tuple(qs)
    # Never larger than the raw int8 form; smaller when every |q| fits in fewer bits.
    raw_len = (33 if with_key else 1) + len(leb128(first)) + len(qs) + 64
    assert len(rec) <= raw_len
    if max(abs(q) for q in qs) <= 7 and len(qs) >= 16:
        assert len(rec) <= raw_len - len(qs) // 2 + 2


def test_packed_record_rejects_bad_padding_and_minus_128():
    rec = bytearray(encode_record(None, 5, qs_to_bytes([1, -1, 2] * 10), b"s" * 64))
    assert rec[0] >> 4 == 3                       # 3-bit zigzag values
    assert decode_record(bytes(rec))[2] == qs_to_bytes([1, -1, 2] * 10)
    rec[-65] |= 1                                 # a padding bit (30 values * 3 bits = 90 of 96)
    with pytest.raises(WireError):
        decode_record(bytes(rec))
    bad = bytes([0x80 | 0x00]) + leb128(1) + leb128(1) + bytes([0xFF]) + b"s" * 64  # w=8 invalid
    with pytest.raises(WireError):
        decode_record(bad)


@given(st.binary(max_size=200))
def test_record_decoder_never_raises_anything_but_wire_error(data):
    try:
        decode_record(data)
    except WireError as e:
        assert e.reason == "malformed"


def test_addresses_validated():
    assert decode_addr(["10.0.0.1", 7000]) == ("10.0.0.1", 7000)
    assert decode_addr(["fd00::1", 7000, 0, 3]) == ("fd00::1", 7000, 0, 3)
    for bad in (None, [], ["x"], ["x" * 100, 1], ["h", True], ["h", -1], [1, 2, 3, 4, 5], [b"h", 1]):
        assert decode_addr(bad) is None


def test_certificates_and_crypto_cache():
    ident = Identity.from_seed(1)
    cert = make_cert(ident, SWARM, b"x" * 32, 7, 3)
    pub, xpub, gen, inc, sig = parse_cert(cert)
    assert (pub, xpub, gen, inc) == (ident.public_bytes(), b"x" * 32, 7, 3)
    assert node_id_of(pub) == ident.node_id and len(ident.node_id) == 16
    cache = CryptoCache()
    from onebyte.protocol.identity import cert_message
    msg = cert_message(SWARM, pub, xpub, gen, inc)
    assert cache.verify(pub, sig, msg) and cache.verify(pub, sig, msg)
    assert cache.verifications == 1
    assert not cache.verify(pub, sig, msg + b"!")
    assert Identity.from_private_bytes(ident.private_bytes()).node_id == ident.node_id


def test_config_rejects_bad_values():
    with pytest.raises(ProtocolConfigError):
        ProtocolConfig(swarm_id=b"short")
    with pytest.raises(ProtocolConfigError):
        ProtocolConfig(swarm_id=SWARM, admission="closed")
    with pytest.raises(ProtocolConfigError):
        ProtocolConfig(swarm_id=SWARM, updates_per_record=0)
    cfg = ProtocolConfig(swarm_id=SWARM)
    assert cfg.transmit_limit(1000) == 16 and cfg.transmit_limit(9) == 4
    assert len(cfg.swarm_tag) == 8


def test_message_numbers_are_wire_format():
    """Append-only: changing an existing number breaks every deployed node."""
    assert {t.name: int(t) for t in MessageType} == {
        "JOIN": 1, "HELLO": 2, "PING": 3, "ACK": 4, "PING_REQ": 5, "PUSH": 6, "DIGEST": 7,
        "VECTOR": 8, "PULL": 9, "RECORDS": 10, "PEERS_REQ": 11, "PEERS": 12,
        "RELAY": 13, "PUNCH_REQ": 14, "PUNCH": 15}


def test_protocol_room_is_pure():
    """No asyncio, sockets, clocks, torch or global randomness in protocol/."""
    banned = {"asyncio", "socket", "time", "torch", "threading", "datetime", "os", "selectors"}
    for path in PROTOCOL_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
                if names == ["random"]:
                    raise AssertionError(f"{path.name}: from random import ...")
            else:
                continue
            assert not banned & set(names), (path.name, names)
        src = path.read_text()
        for fn in ("random.random(", "random.randint(", "random.choice(", "random.shuffle(",
                   "random.sample(", "random.uniform(", "random.getrandbits("):
            assert fn not in src, (path.name, fn)
    assert random  # the tests themselves may use random.Random instances


def test_each_collaborator_owns_its_counters_and_the_engine_shows_them_all():
    """One writer per counter: the engine, its event queue, NAT, sync, serving, equivocations
    and amendments each declare theirs up front; `Engine.counters` merges them, no key twice."""
    from onebyte.protocol.testing import SWARM, Net
    net = Net(ProtocolConfig(SWARM))
    e = net.add(1)
    parts = [e._counters, e.events.counters, e.nat.counters, e.sync.counters, e.sync.serving.counters,
             e.sync.equiv.counters, e.amendments.counters]
    keys = [k for part in parts for k in part]
    assert len(keys) == len(set(keys))
    assert set(e.counters) == set(keys)
    before = set(e.counters)
    net.add(2, bootstrap=[net.addr_of[e.node_id]])
    net.advance(5.0)
    assert set(e.counters) == before          # nothing created on the fly
    assert e.counters["datagrams_in"] > 0 and e.counters["bytes_out"] > 0
