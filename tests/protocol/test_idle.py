"""Idle cost (issue 12): anti-entropy and peer exchange back off while nothing changes and
resume at once on news; quiet digests are one short hash; small swarms push each record
from its origin to every peer once.  Fake clock and fake network only."""
import pytest

from onebyte.protocol import ProtocolConfig, UpdatesReceived
from onebyte.protocol.sim import NetConfig, Swarm
from onebyte.protocol.digests import ROOT, sparse as _sparse, unsparse as _unsparse
from onebyte.protocol.dissemination import BUCKET_HASH, DIGEST_SIZE
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import MessageType, WireError, decode_record, unpack_body

CFG = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5)
TYPE = 9   # offset of the message type in a datagram


def digests_from(net: Net, addr, since: float) -> list:
    """(time-ordered) DIGEST datagrams addr sent since the log index `since`."""
    return [d for d, src, _ in net.log[since:] if src == addr and d[TYPE] == MessageType.DIGEST]


def pair(cfg=CFG):
    net = Net(cfg)
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    net.advance(3.0)
    return net, a, b


def test_anti_entropy_backs_off_while_in_agreement_and_resumes_at_once_on_a_gap():
    net, a, b = pair()
    a_addr = net.addr_of[a.node_id]
    net.advance(60.0)   # long quiet: the interval has reached its cap
    assert a.sync.ae_interval == CFG.anti_entropy_max_interval_s
    mark = len(net.log)
    net.advance(4 * CFG.anti_entropy_max_interval_s)
    quiet = digests_from(net, a_addr, mark)
    assert 3 <= len(quiet) <= 5   # about one per max interval, not one per second
    # Records that arrive in order are the flow working, not news: a stays backed off.
    for step in range(1, 5):
        b.publish(step, 3, net.now)
    net.advance(1.0)   # past the linger (a batch of records_per_signature may wait for it)
    assert a.book.contiguous(b.node_id) == 4
    assert a.sync.ae_interval == CFG.anti_entropy_max_interval_s
    # A gap is news: b's next record is lost, the one after it arrives and waits for it,
    # and a compares again within the base interval.
    b_addr = net.addr_of[b.node_id]
    for step in range(5, 9):
        b.publish(step, 3, net.now)
    net.advance(1.0, drop=lambda d, src, dst: src == b_addr and d[TYPE] == MessageType.PUSH)
    for step in range(9, 13):
        b.publish(step, 3, net.now)
    assert a.sync.ae_interval == CFG.anti_entropy_max_interval_s
    net.advance(0.8)
    # 9..12 were held for the gap, and anti-entropy at its base repaired it at once (backed
    # off, the next round would have been up to anti_entropy_max_interval_s away).
    assert a.book.contiguous(b.node_id) == 12
    assert a.sync.ae_interval == CFG.anti_entropy_interval_s
    mark = len(net.log)
    net.advance(CFG.anti_entropy_interval_s + 0.1)
    assert digests_from(net, a_addr, mark)


def test_quiet_rounds_send_a_short_root_hash():
    net, a, b = pair()
    net.advance(30.0)
    mark = len(net.log)
    net.advance(2 * CFG.anti_entropy_max_interval_s)
    sent = digests_from(net, net.addr_of[a.node_id], mark)
    assert sent
    for data in sent:
        payload, _, _ = unpack_body(data[35:-16])
        assert payload[1] & ROOT and len(payload[0]) == 8
        assert len(data) < 100


def test_a_quiet_node_behind_its_peer_catches_up_through_root_digests():
    """Pushes lost and digests lost until both nodes backed off again: a's short ROOT digest
    then differs from b's, b answers with its digest, and a pulls within the back-off cap."""
    net, a, b = pair()
    net.advance(60.0)
    b_addr = net.addr_of[b.node_id]
    for step in range(1, 9):
        b.publish(step, -2, net.now)

    def lose(data, src, dst):
        return src == b_addr and data[TYPE] == MessageType.PUSH or data[TYPE] == MessageType.DIGEST

    net.advance(40.0, drop=lose)
    assert a.book.contiguous(b.node_id) == 0
    assert a.sync.ae_interval == b.sync.ae_interval == CFG.anti_entropy_max_interval_s

    def lose_pushes(data, src, dst):
        return src == b_addr and data[TYPE] == MessageType.PUSH

    mark = len(net.log)
    net.advance(CFG.anti_entropy_max_interval_s + 2.0, drop=lose_pushes)
    assert a.book.contiguous(b.node_id) == 8
    # One full digest went out: the answer to the other side's differing ROOT.
    sent = digests_from(net, b_addr, mark) + digests_from(net, net.addr_of[a.node_id], mark)
    assert any(not unpack_body(d[35:-16])[0][1] & ROOT for d in sent)


def test_peer_exchange_backs_off_while_membership_is_quiet():
    net, a, b = pair()
    net.advance(3 * CFG.peer_exchange_max_interval_s)
    assert a._pex_interval == CFG.peer_exchange_max_interval_s
    c = net.add(3, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    net.advance(1.0)
    assert a._pex_interval == CFG.peer_exchange_interval_s   # a member joined: back to the base
    assert c.node_id in {p.node_id for p in b.peers()}


def test_sparse_digest_round_trips_and_rejects_bad_lengths():
    h = BUCKET_HASH
    packed = bytearray(DIGEST_SIZE)
    packed[h * 5:h * 6] = b"\x01" * h
    packed[h * 63:] = b"\xff" * h
    sparse = _sparse(bytes(packed))
    assert len(sparse) == 8 + 2 * h
    assert _unsparse(sparse) == bytes(packed)
    for bad in (b"", sparse[:-1], sparse + b"\0"):
        with pytest.raises(WireError):
            _unsparse(bad)


def test_small_swarm_origin_pushes_each_record_to_every_peer_once():
    cfg = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5, direct_push_max=8)
    swarm = Swarm(5, cfg, seed=3, net=NetConfig(delay_s=0.001, jitter_s=0.0))
    swarm.start_all()
    swarm.run_for(10.0)
    origin = swarm.nodes[0]
    pushed = []
    send = swarm._transmit

    def spy(src, out):
        for data, dst in out:
            if data[TYPE] == MessageType.PUSH:
                _, _, records = unpack_body(data[35:-16] if not data[10] & 1 else data[35 + 140:-16])
                if any(decode_record(r)[1] == 1 for r in records):
                    pushed.append((src.index, dst))
        send(src, out)

    swarm._transmit = spy
    for step in range(1, 5):
        origin.engine.publish(step, 1, swarm.now)
    swarm._after(origin)
    swarm.run_for(2.0)
    assert all(n.engine.book.contiguous(origin.engine.node_id) == 4 for n in swarm.nodes)
    assert sorted(pushed) == sorted((0, n.addr) for n in swarm.nodes[1:])   # 4 copies, no relay


def test_idle_three_node_swarm_stays_under_the_byte_budget():
    """docs/performance-protocol.md: <= 200 B/s per node with no updates flowing."""
    swarm = Swarm(3, ProtocolConfig(swarm_id=SWARM), seed=5)
    swarm.start_all(stagger_s=1.0)
    swarm.run_for(120.0)
    before = sum(n.engine.counters["bytes_out"] for n in swarm.nodes)
    swarm.run_for(120.0)
    per_node_per_s = (sum(n.engine.counters["bytes_out"] for n in swarm.nodes) - before) / 3 / 120.0
    assert per_node_per_s <= 200
    assert all(len(n.engine.members.live_members()) == 2 for n in swarm.nodes)


def test_a_crashed_node_is_still_declared_dead_while_the_swarm_is_idle():
    swarm = Swarm(4, ProtocolConfig(swarm_id=SWARM), seed=7, keep_events=True)
    swarm.start_all()
    swarm.run_for(120.0)   # idle long enough for every back-off to reach its cap
    victim = swarm.nodes[3]
    swarm.crash(victim)
    t0 = swarm.now
    # Bound (docs/protocol.md): a probe round over n - 1 members, plus the suspicion timeout.
    cfg = swarm.config
    bound = (3 + 1) * cfg.probe_interval_s + cfg.suspicion_timeout(4) + 1.0
    swarm.run_for(bound)
    for n in swarm.nodes[:3]:
        states = {p.node_id: p.state for p in n.engine.peers()}
        assert states[victim.identity.node_id] == "dead", swarm.now - t0
