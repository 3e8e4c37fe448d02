"""Being served a repair is news for anti-entropy (fake network, fake clock): a node that was
behind and got records from a peer's answer compares again at the base interval, instead of
waiting out a backed-off one (up to 16 s) while it may still lack more."""
from onebyte.protocol import ProtocolConfig
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import parse_header, unpack_body

CFG = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5)


def carries_records(data: bytes) -> bool:
    h = parse_header(data, CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram)
    return bool(unpack_body(h.body)[2])


def test_records_served_to_a_node_that_lacked_them_reset_its_anti_entropy_back_off():
    net = Net(CFG)
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    net.advance(2.0)
    b_addr = net.addr_of[b.node_id]
    for step in range(1, 5):
        a.publish(step, step, net.now)
    net.advance(3.0, drop=lambda data, src, dst: dst == b_addr and carries_records(data))
    assert b.book.contiguous(a.node_id) == 0 and a.book.contiguous(a.node_id) == 4
    base, most = CFG.anti_entropy_interval_s, CFG.anti_entropy_max_interval_s
    b.sync.ae_interval, b.sync.ae_due = most, net.now + most   # backed off, as after quiet rounds
    a.sync._serve(a.members.get(b.node_id), [(a.node_id, 1)])  # a's answer to b's VECTOR
    net.collect(net.addr_of[a.node_id])
    net.deliver()
    assert b.book.contiguous(a.node_id) == 4
    assert b.sync.ae_interval == base and b.sync.ae_due <= net.now + base
