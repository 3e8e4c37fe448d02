"""Being served a repair is news for anti-entropy (fake network, fake clock): a node that was
behind and got records from a peer's answer compares again at the base interval, instead of
waiting out a backed-off one (up to 16 s) while it may still lack more."""
from onebyte.protocol import ProtocolConfig
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import MessageType, parse_header, unpack_body

CFG = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5)


def carries_records(data: bytes) -> bool:
    h = parse_header(data, CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram)
    return bool(unpack_body(h.body)[2])


def test_records_served_to_a_node_that_lacked_them_reset_its_anti_entropy_back_off():
    net = Net(CFG)
    a, b = net.pair()
    net.publish_unseen(a, 4, b)
    assert b.book.contiguous(a.node_id) == 0 and a.book.contiguous(a.node_id) == 4
    base, most = CFG.anti_entropy_interval_s, CFG.anti_entropy_max_interval_s
    b.sync.ae_interval, b.sync.ae_due = most, net.now + most   # backed off, as after quiet rounds
    a.sync.serving.serve(a.members.get(b.node_id), [(a.node_id, 1)])  # a's answer to b's VECTOR
    net.collect(net.addr_of[a.node_id])
    net.deliver()
    assert b.book.contiguous(a.node_id) == 4
    assert b.sync.ae_interval == base and b.sync.ae_due <= net.now + base


def test_a_gap_that_stays_unfilled_keeps_anti_entropy_at_its_base_interval_for_a_while():
    """b holds a record beyond a gap and every repair exchange fails (a's answers are lost):
    it compares every base interval instead of backing off, for 4 x the longest interval;
    then, as for a gap nobody can fill, it backs off as before."""
    cfg = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5, records_per_signature=1)
    net = Net(cfg)
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    net.advance(2.0)
    a_addr, b_addr = net.addr_of[a.node_id], net.addr_of[b.node_id]
    for step in range(1, 5):
        a.publish(step, step, net.now)
    net.advance(2.0, drop=lambda data, src, dst: dst == b_addr and carries_records(data))
    repairs = (MessageType.DIGEST, MessageType.VECTOR, MessageType.RECORDS)

    def lose_repairs(data, src, dst):
        return src == a_addr and dst == b_addr and data[9] in repairs

    for step in range(5, 9):
        a.publish(step, step, net.now)
    net.advance(3.0, drop=lose_repairs)
    assert b.book.contiguous(a.node_id) == 0 and b.sync.book.pending_total == 1
    base, most = cfg.anti_entropy_interval_s, cfg.anti_entropy_max_interval_s
    seen = set()
    for _ in range(40):
        net.advance(1.0, drop=lose_repairs)
        seen.add(b.sync.ae_interval)
    assert seen == {base}
    net.advance(4 * most, drop=lose_repairs)
    assert b.sync.ae_interval > base   # stuck for longer: backs off like any quiet node
    net.advance(10.0)
    assert b.book.contiguous(a.node_id) == 8
