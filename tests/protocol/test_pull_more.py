"""A cut-short answer is pulled on at once (fake network, fake clock): a node far behind (a
healed partition) catches up one request per round trip, not one per anti-entropy round."""
from onebyte.protocol import messages as msg
from onebyte.protocol.testing import Raw
from onebyte.protocol import ProtocolConfig
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import NIL, MessageType, packb, parse_header, unpack_body

CFG = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5)
STEPS = 1600


def header(data: bytes):
    return parse_header(data, CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram)


def sent(net, src, mtype, since: int = 0) -> list:
    return [d for d, s, _ in net.log[since:] if s == src and header(d).type == mtype]


def far_behind():
    """a published STEPS updates that b never received; b has paid for a's next answer (its
    padded PULL would have: protocol/serving.py Credit)."""
    net = Net(CFG)
    a, b = net.pair()
    net.publish_unseen(a, STEPS, b, seconds=2.0)
    assert a.book.contiguous(a.node_id) == STEPS and b.book.contiguous(a.node_id) == 0
    a.sync.serving.credit.earn(b.node_id, net.addr_of[b.node_id], CFG.pull_serve_bytes)
    return net, a, b


def test_a_node_far_behind_pulls_the_rest_of_a_cut_short_answer_without_waiting_a_round():
    net, a, b = far_behind()
    a_addr, b_addr = net.addr_of[a.node_id], net.addr_of[b.node_id]
    mark = len(net.log)
    a.sync.serving.serve(a.members.get(b.node_id), [(a.node_id, 1)])   # a's answer to b's VECTOR
    net.collect(a_addr)
    first = sent(net, a_addr, MessageType.RECORDS, mark)
    # The answer stopped at pull_serve_bytes; its last datagram says what more a holds.
    assert sum(len(d) for d in first) < 2 * CFG.pull_serve_bytes
    assert unpack_body(header(first[-1]).body)[0] == [[a.node_id, STEPS]]
    assert all(unpack_body(header(d).body)[0] is None for d in first[:-1])
    net.deliver()   # no time passes: no anti-entropy round, no push round
    assert b.book.contiguous(a.node_id) == STEPS
    pulls = sent(net, b_addr, MessageType.PULL, mark)
    assert len(pulls) >= 3   # one per cut-short answer
    # Nothing was served twice: every PULL asked from the step after what b held.
    assert a.counters.get("duplicate_records", 0) == 0 and b.counters.get("duplicate_records", 0) == 0


def test_an_answer_that_delivers_nothing_new_is_not_pulled_on():
    """Records the receiver holds already (or refuses) never keep a loop of requests going."""
    net, a, b = far_behind()
    a_addr, b_addr = net.addr_of[a.node_id], net.addr_of[b.node_id]
    net.advance(10.0)   # anti-entropy brings b up to date
    assert b.book.contiguous(a.node_id) == STEPS
    m = a.members.get(b.node_id)
    packed, _ = a.sync.serving.served(m, [(a.node_id, 1)])
    b.sync.pull(b.members.get(a.node_id), {}, net.now)   # b's last request to a (nothing to ask)
    mark = len(net.log)
    # Records b holds, from a server that claims more than b holds (a lie, or news to come).
    a.outbox.send(msg.Records(((a.node_id, STEPS + 50),)), m, [], packed[:8])
    net.collect(a_addr)
    net.deliver()
    assert sent(net, a_addr, MessageType.RECORDS, mark)
    assert sent(net, b_addr, MessageType.PULL, mark) == []


def test_a_records_payload_that_is_not_a_list_of_entries_is_a_counted_drop():
    net, a, b = far_behind()
    a_addr = net.addr_of[a.node_id]
    m = a.members.get(b.node_id)
    packed, _ = a.sync.serving.served(m, [(a.node_id, 1)])
    for junk in (packb("more"), packb([[b"short", 3]]), packb([[a.node_id, -1]])):
        before = b.counters["drops"].get("malformed", 0)
        a.outbox.send(Raw(MessageType.RECORDS, junk), m, [], packed[:8])
        net.collect(a_addr)
        net.deliver()
        assert b.counters["drops"].get("malformed", 0) == before + 1
        assert b.book.contiguous(a.node_id) == 0   # the datagram was dropped whole
    a.outbox.send(msg.Records(), m, [], packed[:8])
    net.collect(a_addr)
    net.deliver()
    assert b.book.contiguous(a.node_id) > 0


def test_an_answer_whose_first_datagram_was_lost_is_still_pulled_on_from_the_gap():
    """The last datagram's records wait beyond the gap the lost one left: new to b all the
    same, so b pulls on, from the gap."""
    net, a, b = far_behind()
    a_addr = net.addr_of[a.node_id]
    mark = len(net.log)
    a.sync.serving.serve(a.members.get(b.node_id), [(a.node_id, 1)])
    net.collect(a_addr)
    first = sent(net, a_addr, MessageType.RECORDS, mark)
    assert len(first) >= 2
    net.deliver(drop=lambda data, src, dst: data is first[0])
    assert b.book.contiguous(a.node_id) == STEPS


def test_a_vector_with_more_to_pull_than_one_pull_asks_brings_the_next_round_forward():
    from onebyte.protocol.sync import FAR_BEHIND_S
    net, a, b = far_behind()
    ma = b.members.get(a.node_id)
    origins = [bytes([i + 1]) * 16 for i in range(30)]
    b.sync.ae_interval, b.sync.ae_due = CFG.anti_entropy_interval_s, net.now + 16.0
    b.sync.on_vector(ma, msg.Vector((), tuple((o, 5) for o in origins)), net.now)   # 30 origins we lack
    assert b.sync.ae_due <= net.now + FAR_BEHIND_S
    b.sync.ae_due = net.now + 16.0
    b.sync.on_vector(ma, msg.Vector((), tuple((o, 9) for o in origins[:3])), net.now)   # one PULL covers it
    assert b.sync.ae_due == net.now + 16.0
