"""Batch signatures (records_per_signature > 1; protocol/records.py, docs/protocol.md
"Batch signatures"): one signature per batch of records, members verified by the hash
their closer signs, in any order and from any relay; equivocation still provable."""
import pytest

from onebyte.protocol import messages as msg
from onebyte.protocol import ProtocolConfig, UpdatesReceived
from onebyte.protocol.equivocation import decode_half, parse_proof
from onebyte.protocol.events import OriginExcluded
from onebyte.protocol.records import (HASH_SIZE, REC_MEMBER, batch_message, decode_any, encode_any,
                                      member_hash, qs_to_bytes, record_message)
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import MessageType, WireError, encode_record, packb, unpack_body

K = 4   # records per signature
N = 4   # updates per record


def config(**kw):
    return ProtocolConfig(swarm_id=SWARM, updates_per_record=N, records_per_signature=K,
                          record_linger_s=100.0, **kw)


def join(net, n):
    engines = [net.add(1)]
    first = net.addr_of[engines[0].node_id]
    engines += [net.add(seed, bootstrap=[first]) for seed in range(2, n + 1)]
    net.deliver()
    net.advance(1.0)
    return engines


def batch(eng, first, qs_list):
    """Canonical records (with the key) of one batch: members, then the closer."""
    pub = eng.identity.public_bytes()
    recs, step, hashes = [], first, []
    for qs in qs_list[:-1]:
        raw = qs_to_bytes(qs)
        recs.append(encode_any(pub, step, raw, None))
        hashes.append(member_hash(SWARM, eng.node_id, step, raw))
        step += len(raw)
    raw = qs_to_bytes(qs_list[-1])
    sig = eng.identity.sign(batch_message(SWARM, eng.node_id, step, raw, tuple(hashes)))
    return recs + [encode_any(pub, step, raw, sig, tuple(hashes))]


def send(net, src, dst, records):
    src.outbox.send(msg.Push(), src.members.members[dst.node_id], [],
              [packb(r) for r in records])
    net.collect(net.addr_of[src.node_id])
    net.deliver()


def delivered(net, eng, origin) -> list:
    out = []
    for ev in net.of_type(net.addr_of[eng.node_id], UpdatesReceived):
        if ev.origin == origin:
            out += [(s, q) for _, s, q in ev.updates()]
    return out


QS = [[1, 2, 3, 4], [-5, 6, -7, 8], [9, 10, 11, 12], [-1, -2, -3, -4]]
ALL = [(i + 1, q) for i, q in enumerate(sum(QS, []))]


def test_encoding_round_trip_and_k1_is_todays_record():
    pub, sig = bytes(range(32)), b"s" * 64
    raw = qs_to_bytes([1, -1, 100, -100])
    hashes = (b"h" * HASH_SIZE, b"i" * HASH_SIZE)
    assert decode_any(encode_any(pub, 7, raw, None)) == (pub, 7, raw, None, ())
    assert decode_any(encode_any(None, 7, raw, sig, hashes)) == (None, 7, raw, sig, hashes)
    assert decode_any(encode_any(pub, 7, qs_to_bytes([1, 0, -1]), sig, hashes))[2] == qs_to_bytes([1, 0, -1])
    # No member hashes: the record of records_per_signature = 1, byte for byte.
    assert encode_any(pub, 7, raw, sig) == encode_record(pub, 7, raw, sig)
    assert batch_message(SWARM, b"o" * 16, 7, raw, ()) == record_message(SWARM, b"o" * 16, 7, raw)
    assert encode_any(pub, 7, raw, None)[0] & REC_MEMBER
    for bad in (encode_any(pub, 7, raw, sig, hashes)[:-70],            # cut into the hashes
                bytes([0x06]) + encode_any(None, 7, raw, None)[1:]):   # member and closer at once
        with pytest.raises(WireError):
            decode_any(bad)


def test_origin_signs_once_per_batch_and_peer_delivers_in_order():
    net = Net(config())
    a, b = join(net, 2)
    for q in sum(QS, []):
        a.publish(a.next_own_step, q, net.now)
    net.advance(1.0)
    assert delivered(net, b, a.node_id) == ALL
    sent = [r for data, src, dst in net.log if data[9] == MessageType.PUSH and src == net.addr_of[a.node_id]
            for r in unpack_body(data[35:-16])[2]]
    sigs = [decode_any(r)[3] is not None for r in sent]
    assert len(sent) == K and sigs == [False, False, False, True]
    # Steps beyond the batch wait for the next closer (linger bounds the wait).
    a.publish(a.next_own_step, 5, net.now)
    net.advance(1.0)
    assert len(delivered(net, b, a.node_id)) == 16
    net.advance(100.0)
    assert delivered(net, b, a.node_id)[-1] == (17, 5)


def test_relay_by_third_node_verifies_and_out_of_order_members_wait():
    net = Net(config())
    a, b, c = join(net, 3)
    recs = batch(a, 1, QS)
    send(net, a, b, recs)
    assert delivered(net, b, a.node_id) == ALL
    # b relays what it stored (canonical, with a's key), closer first and members reversed.
    stored = b.store.get(a.node_id, 1, 1 << 20)
    assert stored == recs
    send(net, b, c, [stored[3]])
    assert delivered(net, c, a.node_id) == []
    send(net, b, c, [stored[2], stored[1]])
    assert delivered(net, c, a.node_id) == []          # step 1..4 still missing
    send(net, b, c, [stored[0]])
    assert delivered(net, c, a.node_id) == ALL           # once each, in step order


def test_flipped_byte_is_refused():
    net = Net(config())
    a, b = join(net, 2)
    recs = batch(a, 1, QS)
    member = bytearray(recs[1])
    member[-1] ^= 0x01
    closer = bytearray(recs[3])
    closer[-70] ^= 0x01                                    # inside the closer's q bytes
    send(net, a, b, [recs[0], bytes(member), recs[2], bytes(closer)])
    drops = b.counters["drops"]
    assert drops.get("bad_signature") == 1
    assert delivered(net, b, a.node_id) == []
    send(net, a, b, [recs[3]])                             # the real closer: the real members pass
    assert delivered(net, b, a.node_id) == ALL[:4]         # the flipped member never verifies
    send(net, a, b, [recs[1]])
    assert delivered(net, b, a.node_id) == ALL


def test_missing_member_is_pulled_by_anti_entropy():
    net = Net(config())
    a, b, c = join(net, 3)
    recs = batch(a, 1, QS)
    send(net, a, b, recs)
    send(net, a, c, [recs[0], recs[2], recs[3]])           # c lacks the second member
    assert delivered(net, c, a.node_id) == ALL[:4]
    net.advance(20.0)
    assert delivered(net, c, a.node_id) == ALL
    assert c.store.version_vector()[a.node_id] == 16


def test_equivocation_inside_a_batch_is_proven_and_spreads():
    net = Net(config())
    a, b, c, d = join(net, 4)
    one = batch(a, 1, QS)
    other_qs = [QS[0], [-5, 6, 99, 8], QS[2], QS[3]]       # step 7 differs, in a member
    two = batch(a, 1, other_qs)
    send(net, a, b, one)
    send(net, a, c, two)
    assert delivered(net, b, a.node_id) == ALL
    send(net, c, b, c.store.get(a.node_id, 1, 1 << 20))   # the versions meet at b
    assert b.counters.get("equivocation_proofs") == 1
    proof = b.sync.equiv.proofs[a.node_id]
    assert proof.step == 7
    halves = [decode_half(h) for h in (proof.record_a, proof.record_b)]
    assert all(is_member for _, _, _, (_, is_member) in halves)   # member + closer, both halves
    pub, step, _, _ = parse_proof(proof.record_a, proof.record_b, 1024)
    assert (pub, step) == (a.identity.public_bytes(), 7)
    # At d (no proof yet): a half whose member does not match its closer's hash is refused.
    half = bytearray(proof.record_a)
    half[3 + int.from_bytes(half[1:3], "little") - 1] ^= 0x02   # the member's last q
    with pytest.raises(WireError, match="bad_signature"):
        d.sync.equiv.on_proof(*sorted((bytes(half), proof.record_b)))
    assert d.sync.equiv.step_of(a.node_id) is None
    net.advance(5.0)
    for eng in (b, c, d):
        ex = net.of_type(net.addr_of[eng.node_id], OriginExcluded)
        assert [(e.origin, e.step) for e in ex] == [(a.node_id, 7)]


def test_batches_reach_every_node_of_a_lossy_swarm_within_a_bound():
    """Under the genesis defaults (records of 64 updates, signed 4 to a batch) and 10% loss,
    every update of every batch, members and closers, reaches every node: the last batch
    within record_linger_s + 20 s of the last publish, by push or by anti-entropy repair."""
    from onebyte.protocol.sim import NetConfig, Swarm
    cfg = ProtocolConfig(SWARM)
    net = NetConfig()
    net.loss = 0.10
    sw = Swarm(12, cfg, seed=7, net=net)
    sw.start_all(stagger_s=1.0)
    sw.run_for(8.0)
    publishers = sw.nodes[:4]
    for node in publishers:
        sw.set_publishing(node, 25.0)    # honest q (Swarm._publish_tick), ~8 records each
    sw.run_for(24.0)
    for node in publishers:
        sw.set_publishing(node, 0)
    sw.run_for(cfg.record_linger_s + 20.0)
    want = {n.engine.node_id: n.engine.next_own_step - 1 for n in publishers}
    assert all(w > 4 * cfg.updates_per_record for w in want.values())   # whole batches went out
    for node in sw.nodes:
        for origin, last in want.items():
            assert node.engine.book.contiguous(origin) == last, (node.index, last)
