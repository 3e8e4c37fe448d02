"""Signed membership amendments (protocol/amendments.py): admit, revoke, rotate; the same
outcome whatever the arrival order; kept by the store across a restart."""
import pytest

from protocol.amendments import AmendKind, Amendments, body, rotation, signed
from protocol.engine import ProtocolError
from protocol.events import AmendmentApplied, OriginExcluded
from protocol.identity import CryptoCache, Identity
from protocol.config import ProtocolConfig
from protocol.store import MemoryRecordStore
from protocol.testing import SWARM, Net
from protocol.wire import Amend, WireError, decode_amend, decode_gossip, encode_amend

import msgpack

AUTH = [Identity.from_seed(100 + i) for i in range(3)]


def config(threshold=1, members=(1, 2, 3), authority=AUTH[:1]):
    return ProtocolConfig(swarm_id=SWARM, admission="closed",
                          members=frozenset(Identity.from_seed(s).public_bytes() for s in members),
                          authority=frozenset(a.public_bytes() for a in authority),
                          authority_threshold=threshold)


def key(seed):
    return Identity.from_seed(seed).public_bytes()


def admit(number, seed, *auth):
    a = Amend(number, AmendKind.ADMIT, key(seed))
    for i in auth or AUTH[:1]:
        a = signed(a, i, SWARM)
    return a


def revoke(number, seed, step, *auth):
    a = Amend(number, AmendKind.REVOKE, key(seed), step)
    for i in auth or AUTH[:1]:
        a = signed(a, i, SWARM)
    return a


def swarm(cfg, seeds=(1, 2, 3), settle=10.0):
    net = Net(cfg)
    first = net.add(seeds[0])
    engines = [first] + [net.add(s, bootstrap=[net.addr_of[first.node_id]]) for s in seeds[1:]]
    net.deliver()
    net.advance(settle)
    return net, engines


def test_an_admitted_key_joins_and_its_updates_are_taken_everywhere():
    net, (a, b, c) = swarm(config())
    newcomer = net.add(4, bootstrap=[net.addr_of[a.node_id]])
    net.advance(3.0)
    assert newcomer.node_id not in {p.node_id for p in a.peers()}   # not a member yet
    assert a.amend(admit(1, 4), net.now) == [admit(1, 4)]
    net.collect(net.addr_of[a.node_id])
    net.advance(15.0)   # gossip, then the newcomer's next knock (reconnect_interval_s)
    for e in (a, b, c):
        assert e.amendments.applied == 1 and e.session.admitted(key(4))
        assert newcomer.node_id in {p.node_id for p in e.peers()}
        assert net.of_type(net.addr_of[e.node_id], AmendmentApplied)[0].kind == AmendKind.ADMIT
    for s in range(1, 6):
        newcomer.publish(s, 3, net.now)
    net.advance(10.0)
    assert all(e.version_vector().get(newcomer.node_id) == 5 for e in (a, b, c))


def test_a_revoked_key_is_excluded_from_its_step_and_cannot_come_back():
    net, (a, b, c) = swarm(config())
    for s in range(1, 11):
        c.publish(s, 2, net.now)
    net.advance(10.0)
    assert a.version_vector()[c.node_id] == 10 and b.version_vector()[c.node_id] == 10
    b.amend(revoke(1, 3, 6), net.now)
    net.collect(net.addr_of[b.node_id])
    net.advance(10.0)
    for e in (a, b):
        assert e.excluded_origins()[c.node_id] == (6, "revoked")
        ex = net.of_type(net.addr_of[e.node_id], OriginExcluded)
        assert [(x.origin, x.step, x.reason) for x in ex] == [(c.node_id, 6, "revoked")]
        assert c.node_id not in {p.node_id for p in e.peers()}
        assert e.session.admitted(key(3))        # its steps 1..5 stay deliverable to laggards
    for s in range(11, 15):
        c.publish(s, 2, net.now)
    net.advance(20.0)   # it keeps knocking: refused
    assert c.node_id not in {p.node_id for p in a.peers()}
    assert a.counters["drops"].get("not_admitted", 0) >= 1


def test_rotation_moves_a_member_to_its_new_key():
    net, (a, b, c) = swarm(config())
    for s in range(1, 4):
        c.publish(s, 1, net.now)
    net.advance(5.0)
    rot = signed(rotation(1, Identity.from_seed(3), Identity.from_seed(9), 4, SWARM), AUTH[0], SWARM)
    a.amend(rot, net.now)
    net.collect(net.addr_of[a.node_id])
    net.advance(5.0)
    successor = net.add(9, bootstrap=[net.addr_of[a.node_id]])
    net.advance(10.0)
    for e in (a, b):
        assert e.excluded_origins()[c.node_id] == (4, "rotated")
        assert e.version_vector()[c.node_id] == 3            # the old key's history stays
        assert successor.node_id in {p.node_id for p in e.peers()}
    bad_link = Amend(2, AmendKind.ROTATE, key(1), 1, key(8), rot.links)
    with pytest.raises(ProtocolError, match="link signature"):
        a.amend(signed(bad_link, AUTH[0], SWARM), net.now)


def test_amendments_take_effect_in_number_order_whatever_the_arrival_order():
    outcomes = []
    for order in ([1, 2, 3], [3, 2, 1], [2, 3, 1]):
        am = Amendments(config(), CryptoCache())
        by_number = {1: admit(1, 7), 2: revoke(2, 2, 5), 3: admit(3, 8)}
        effective = []
        for n in order:
            effective += [x.number for x in am.take(by_number[n])]
        assert effective == [1, 2, 3]   # a gap waits
        outcomes.append((am.applied, frozenset(am.admitted), dict(am.revoked)))
    assert len(set(map(repr, outcomes))) == 1
    assert outcomes[0] == (3, {key(7), key(8)}, {key(2): 5})


def test_two_amendments_with_one_number_resolve_alike_everywhere():
    x, y = admit(1, 7), admit(1, 8)
    keep = x if body(SWARM, x) < body(SWARM, y) else y
    for first, second in ((x, y), (y, x)):
        am = Amendments(config(), CryptoCache())
        am.take(first)
        am.take(second)
        assert am.held[1] == keep and am.admitted == {keep.key}
        assert am.counters["amendments_conflicting"] == 1
    am = Amendments(config(), CryptoCache())
    am.take(x)
    assert am.take(Amend(x.number, x.kind, x.key, sigs=x.sigs)) == []   # the same one again
    assert am.counters["amendments_conflicting"] == 0


def test_k_of_n_authority_signatures_are_required():
    cfg = config(threshold=2, authority=AUTH)
    am = Amendments(cfg, CryptoCache())
    one = admit(1, 7, AUTH[0])
    assert "1 valid authority signature(s), the genesis needs 2" in am.problem(one).why
    assert am.problem(one).reason == "bad_signature"
    with pytest.raises(WireError):
        am.take(one)
    assert am.take(signed(one, AUTH[2], SWARM)) and am.admits(key(7))
    stranger = signed(Amend(2, AmendKind.ADMIT, key(8)), Identity.from_seed(55), SWARM)
    assert am.problem(signed(stranger, AUTH[1], SWARM)).why.startswith("1 valid")   # a stranger's does not count
    forged = Amend(2, AmendKind.ADMIT, key(8), sigs=((AUTH[0].public_bytes(), bytes(64)),
                                                      (AUTH[1].public_bytes(), bytes(64))))
    assert am.problem(forged).why.startswith("0 valid")
    no_authority = Amendments(config(authority=()), CryptoCache())
    assert "names no authority" in no_authority.problem(one).why


def test_the_store_keeps_amendments_across_a_restart():
    cfg = config()
    store = MemoryRecordStore()
    net = Net(cfg)
    a = net.add(1, store=store)
    a.amend(admit(1, 7), net.now)
    a.amend(revoke(2, 2, 3), net.now)
    assert len(store.amendments()) == 2 and store.rule_exclusions()[Identity.from_seed(2).node_id] == (3, "revoked")
    again = Net(cfg).add(1, store=store)
    assert again.amendments.applied == 2 and again.session.admitted(key(7))
    assert again.excluded_origins()[Identity.from_seed(2).node_id] == (3, "revoked")


def test_a_late_node_learns_earlier_amendments_from_the_announcements():
    net, (a, b) = swarm(config(), seeds=(1, 2))
    a.amend(admit(1, 7), net.now)
    a.amend(admit(2, 8), net.now)
    net.collect(net.addr_of[a.node_id])
    net.advance(60.0)   # the news has long stopped being gossiped
    late = net.add(3, bootstrap=[net.addr_of[a.node_id]])
    net.advance(25.0)
    assert late.amendments.applied == 2 and late.session.admitted(key(8))


def test_malformed_amendment_items_are_counted_drops():
    good = admit(1, 7)
    assert decode_amend(encode_amend(good)) == good
    assert decode_gossip(msgpack.unpackb(encode_amend(good))) == good
    bad = [[6, 0, 0, key(7), 0, b"", [], []],          # number 0
           [6, 1, 0, key(7)[:31], 0, b"", [], []],    # short key
           [6, 1, 0, key(7), 0, b"x", [], []],        # a new key that is not a key
           [6, 1, 0, key(7), 0, b"", [b"s"], []],     # a short link signature
           [6, 1, 0, key(7), 0, b"", [], [[key(1)]]],  # a signature without its key
           [6, 1, 0, key(7), 0, b"", []]]             # short item
    for item in bad:
        with pytest.raises(WireError, match="malformed"):
            decode_gossip(item)
    net, (a, b) = swarm(config(), seeds=(1, 2))
    with pytest.raises(ProtocolError, match="too far ahead"):
        a.amend(admit(999, 7), net.now)
    with pytest.raises(ProtocolError, match="an admit amendment carries a key only"):
        a.amend(signed(Amend(1, AmendKind.ADMIT, key(7), 5), AUTH[0], SWARM), net.now)
