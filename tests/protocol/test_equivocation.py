"""Equivocation resolved (protocol/equivocation.py), over the fake network and clock: an
origin signs two versions of the same steps and sends them to different nodes; the proof
is found, spreads, and every node excludes the origin from the same step, taking back what
it had delivered, so delivered sets and version vectors agree."""
import hashlib

import pytest

from onebyte.protocol import messages as msg
from onebyte.protocol import UpdatesReceived
from onebyte.protocol.events import OriginExcluded
from onebyte.protocol.equivocation import first_conflict, parse_proof
from onebyte.protocol.records import qs_to_bytes, record_message
from onebyte.protocol.testing import SWARM
from onebyte.protocol.wire import MessageType, WireError, encode_proof, encode_record, packb


def join(net, n):
    engines = [net.add(1)]
    first = net.addr_of[engines[0].node_id]
    engines += [net.add(seed, bootstrap=[first]) for seed in range(2, n + 1)]
    net.deliver()
    net.advance(1.0)
    return engines


def signed(eng, first, qs):
    raw = qs_to_bytes(qs)
    sig = eng.identity.sign(record_message(SWARM, eng.node_id, first, raw))
    return encode_record(eng.identity.public_bytes(), first, raw, sig)


def send(net, src, dst, records=(), gossip=()):
    src.outbox.send(msg.Push(), src.members.members[dst.node_id], list(gossip),
              [packb(r) for r in records])
    net.collect(net.addr_of[src.node_id])
    net.deliver()


def applied(net, eng) -> dict:
    """What a driver holds after the engine's events: delivered updates, minus those taken
    back when an OriginExcluded came after them (the node's Replica.undo)."""
    held = {}
    for ev in net.events[net.addr_of[eng.node_id]]:
        if isinstance(ev, UpdatesReceived):
            held.update({(o, s): q for o, s, q in ev.updates()})
        elif isinstance(ev, OriginExcluded):
            held = {(o, s): q for (o, s), q in held.items() if o != ev.origin or s < ev.step}
    return held


def report_weights(net, engines) -> None:
    """Each engine's driver reports a digest of what it holds, as the worker does."""
    for eng in engines:
        held = applied(net, eng)
        vv = {}
        for o, s in held:
            vv[o] = max(vv.get(o, 0), s)
        weights = hashlib.blake2b(repr(sorted(held.items())).encode(), digest_size=16).digest()
        vvh = hashlib.blake2b(repr(sorted(vv.items())).encode(), digest_size=16).digest()
        eng.set_weights_digest(weights, vvh)


def run(net, engines, seconds):
    for _ in range(int(seconds)):
        report_weights(net, engines)
        net.advance(1.0)


def test_first_conflict_and_what_is_not_a_proof(net):
    assert first_conflict(1, b"\x01\x02\x03", 2, b"\x02\x04") == 3
    assert first_conflict(1, b"\x01\x02", 2, b"\x02\x05") is None      # agree on step 2
    assert first_conflict(1, b"\x01", 3, b"\x01") is None              # no overlap
    x, y = join(net, 2)
    a, b = signed(x, 1, [1, 2, 3]), signed(x, 2, [2, 9])
    pub, step, _, _ = parse_proof(a, b, 64)
    assert pub == x.identity.public_bytes() and step == 3
    with pytest.raises(WireError):
        parse_proof(a, signed(x, 2, [2, 3]), 64)    # the same q where they overlap
    with pytest.raises(WireError):
        parse_proof(a, signed(y, 1, [1, 2, 4]), 64)  # two keys
    with pytest.raises(WireError):
        parse_proof(encode_record(None, 1, b"\x01", b"s" * 64), a, 64)   # no key


def test_forged_proof_is_a_counted_drop(net):
    x, b = join(net, 2)
    good = signed(x, 1, [1, 2])
    forged = bytearray(signed(x, 1, [1, 3]))
    forged[-1] ^= 1
    send(net, x, b, gossip=[encode_proof(good, bytes(forged))])
    assert b.counters["drops"].get("bad_signature") == 1
    assert x.node_id not in b.excluded_origins()


def test_equivocation_to_different_nodes_ends_in_the_same_exclusion(net):
    x, b, c, d = join(net, 4)
    for s in range(1, 5):
        x.publish(s, 1, net.now)
    net.advance(2.0)
    # Steps 5..8 twice, validly signed: A to b, B to c (they differ first at step 7); d gets neither.
    send(net, x, b, [signed(x, 5, [3, 3, 3, 3])])
    send(net, x, c, [signed(x, 5, [3, 3, -3, 3])])
    assert b.version_vector()[x.node_id] == c.version_vector()[x.node_id] == 8
    honest = [b, c, d]
    run(net, honest, 30)
    want = {(x.node_id, s): q for s, q in zip(range(1, 7), [1, 1, 1, 1, 3, 3])}
    for eng in honest:
        assert eng.excluded_origins()[x.node_id] == (7, "equivocation")
        assert eng.version_vector()[x.node_id] == 6
        assert {k: v for k, v in applied(net, eng).items() if k[0] == x.node_id} == want
        assert eng.counters["equivocation_proofs"] >= 1
    for eng in (b, c):   # both had delivered step 7 and 8 (each its version) and took them back
        ex = [e for e in net.events[net.addr_of[eng.node_id]] if isinstance(e, OriginExcluded)]
        assert [(e.origin, e.step, e.reason) for e in ex] == [(x.node_id, 7, "equivocation")]
    assert len({tuple(sorted(e.version_vector().items())) for e in honest}) == 1
    assert len({tuple(sorted(applied(net, e).items())) for e in honest}) == 1
    # Later steps of the origin are refused everywhere, whoever sends them.
    send(net, x, d, [signed(x, 9, [1])])
    assert d.version_vector()[x.node_id] == 6


def test_a_lower_proof_wins_and_a_restart_keeps_it(net):
    x, b, c = join(net, 3)
    for s in range(1, 9):
        x.publish(s, 2, net.now)
    net.advance(3.0)
    assert b.version_vector()[x.node_id] == 8
    late = encode_proof(*sorted((signed(x, 5, [2, 2, 2, 2]), signed(x, 5, [2, 2, 2, 5]))))
    send(net, x, b, gossip=[late])
    assert b.excluded_origins()[x.node_id] == (8, "equivocation")
    early = encode_proof(*sorted((signed(x, 1, [2, 2, 2, 2]), signed(x, 1, [2, 2, 7, 2]))))
    send(net, x, c, gossip=[early])
    run(net, [b, c], 10)
    for eng in (b, c):
        assert eng.excluded_origins()[x.node_id] == (3, "equivocation")
        assert eng.version_vector()[x.node_id] == 2
    steps = [e.step for e in net.events[net.addr_of[b.node_id]] if isinstance(e, OriginExcluded)]
    assert steps == [8, 3]
    # A restart from the store holds the same exclusion, and refuses steps from it on.
    b2 = net.add(2, addr=("10.0.0.22", 7000), store=b.store, generation=1)
    assert b2.excluded_origins()[x.node_id] == (3, "equivocation")
    assert b2.version_vector()[x.node_id] == 2


def test_another_split_of_the_same_steps_is_found(net):
    x, b, c = join(net, 3)
    for s in range(1, 5):
        x.publish(s, 1, net.now)
    net.advance(2.0)
    send(net, x, b, [signed(x, 5, [4, 4, 4, 4])])
    # b holds 5..8 as one record; a record 7..8 with other q at step 8 is a conflict too.
    send(net, x, b, [signed(x, 7, [4, 6])])
    assert b.excluded_origins()[x.node_id] == (8, "equivocation")
    assert b.version_vector()[x.node_id] == 7
    # ... and one that only splits them differently, with the same q, is not.
    send(net, x, c, [signed(x, 5, [4, 4, 4, 4])])
    send(net, x, c, [signed(x, 7, [4, 4])])
    assert x.node_id not in c.excluded_origins()


def test_a_diverged_peer_is_sent_every_origin_in_turn_even_when_one_answer_holds_few():
    """tests/node/test_equivocation.py timed out now and then: with 4 origins and a stride of
    8, every divergence sent the same first origins, the answer was full before the last one
    (the equivocator's, sorted last), and the two versions never met."""
    from collections import deque
    from types import SimpleNamespace
    from onebyte.protocol.config import ProtocolConfig
    from onebyte.protocol.equivocation import Equivocations

    sent = []
    origins = {}
    for i in range(4):
        recent = {first: (first + 7, b"f", [i, first, b"q" * 8, b"s" * 64]) for first in range(1, 200, 8)}
        origins[bytes([i]) * 16] = SimpleNamespace(recent=recent, recent_order=deque(recent))
    outbox = SimpleNamespace(send_records=lambda m, recs, limit: sent.append(recs))
    eq = Equivocations(ProtocolConfig(swarm_id=SWARM), None, None, SimpleNamespace(origins=origins), None, outbox,
                       None, None, exclude=None, news=None)
    for _ in range(4):
        eq.on_diverged(None)
    got = {msgpack_first(r) for recs in sent for r in recs}
    assert got == {0, 1, 2, 3}
    assert msgpack_step(sent[0][0]) == 193   # newest first


def msgpack_first(packed: bytes) -> int:
    import msgpack
    return msgpack.unpackb(packed)[0]


def msgpack_step(packed: bytes) -> int:
    import msgpack
    return msgpack.unpackb(packed)[1]
