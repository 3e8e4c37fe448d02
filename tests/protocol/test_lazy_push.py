"""Lazy push (simulator, seeded): where the eager push misses, each node's IHAVE entries
(records it delivered, in the PUSH payload) let a node that lacks one pull it from the
announcer, without waiting for anti-entropy; records that come as a repair are not pushed on."""
from onebyte.protocol import ProtocolConfig
from onebyte.protocol.sim import NetConfig, Swarm
from onebyte.protocol.testing import SWARM


def run(lazy: int, seed: int = 3):
    """40 nodes (above direct_push_max: records are relayed), 10% loss, one eager send per
    node and record (record_retransmit_mult=1 on 40 nodes: ceil(log10 41) = 2 sends), 8 of them
    publishing; then how long until every node holds every update."""
    cfg = ProtocolConfig(SWARM, record_retransmit_mult=1, lazy_push_mult=lazy, record_linger_s=0.5,
                         updates_per_record=8, anti_entropy_interval_s=4.0, anti_entropy_max_interval_s=4.0)
    net = NetConfig()
    net.loss = 0.10
    sw = Swarm(40, cfg, seed=seed, net=net)
    sw.start_all(stagger_s=1.0)
    sw.run_for(10.0)
    publishers = sw.nodes[:8]
    for node in publishers:
        sw.set_publishing(node, 8.0)
    sw.run_for(6.0)
    for node in publishers:
        sw.set_publishing(node, 0)
    sw.run_for(cfg.record_linger_s)
    want = {n.engine.node_id: n.engine.next_own_step - 1 for n in publishers}

    def missing():   # (node, origin) pairs short of the origin's last update
        return sum(node.engine.book.contiguous(o) < last for node in sw.nodes for o, last in want.items())
    sw.run_for(2.0)
    after_2s = missing()
    sw.run_for(28.0)
    pulls = sum(node.engine.counters["lazy_pulls"] for node in sw.nodes)
    return after_2s, missing(), pulls


def test_records_the_eager_push_missed_are_pulled_from_an_announcer():
    after_2s, at_end, pulls = run(lazy=1)
    assert pulls > 0 and at_end == 0
    off_2s, off_end, pulls_off = run(lazy=0)
    assert pulls_off == 0 and off_end == 0     # anti-entropy alone gets there too, later:
    assert after_2s * 3 < off_2s               # 2 s after the last record, a third as many gaps


def test_a_push_of_ihave_entries_fits_a_datagram_with_our_certificate():
    """A full queue of IHAVE entries (more origins than one payload holds) to a peer that
    has not yet shown it holds our certificate: the PUSH stays within max_datagram (a
    payload of the fixed maximum was 5 bytes over and dropped as oversize)."""
    from onebyte.protocol.testing import Net
    from onebyte.protocol.messages import IHAVE_PREFIX, IHAVE_SIZE
    from onebyte.protocol.wire import MessageType
    cfg = ProtocolConfig(SWARM, direct_push_max=0)    # lazy push from the first peer on
    net = Net(cfg)
    a, b = net.pair()
    for i in range(200):
        origin = i.to_bytes(32, "big")
        a.sync.ihave_q.push(origin, origin[:IHAVE_PREFIX] + (7).to_bytes(IHAVE_SIZE - IHAVE_PREFIX, "little"))
    for confirmed in (True, False):
        a.members.get(b.node_id).channel.confirmed = confirmed
        mark = len(net.log)
        a.sync.push_round(net.now)
        net.collect(net.addr_of[a.node_id])
        pushes = [d for d, s, _ in net.log[mark:] if d[9] == MessageType.PUSH]
        assert pushes and all(len(d) <= cfg.max_datagram for d in pushes), [len(d) for d in pushes]


def test_a_node_that_missed_an_origins_first_records_pulls_them_on_an_ihave():
    """b lost the first records a pushed and holds only later ones (beyond the gap, nothing
    of a delivered): an IHAVE from c, which holds them all, makes b want them (its prefix
    is known from the held records), and b pulls them."""
    from onebyte.protocol.testing import Net
    from onebyte.protocol.wire import MessageType
    # record_retransmit_mult=2: a sends each record to both peers (at 1, one of them), so c
    # holds every record
    cfg = ProtocolConfig(SWARM, direct_push_max=0, updates_per_record=4, record_linger_s=0.1,
                         records_per_signature=1, anti_entropy_interval_s=60.0,
                         anti_entropy_max_interval_s=60.0, record_retransmit_mult=2)
    net = Net(cfg)
    a = net.add(1)
    b = net.add(2, bootstrap=[net.addr_of[a.node_id]])
    c = net.add(3, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    net.advance(3.0)
    b_addr = net.addr_of[b.node_id]
    repair = (MessageType.DIGEST, MessageType.VECTOR, MessageType.PULL, MessageType.RECORDS)

    def first_phase(data, src, dst):    # b hears no PUSH, and no repair of any kind
        return b_addr in (src, dst) and (data[9] == MessageType.PUSH or data[9] in repair)

    def second_phase(data, src, dst):   # pushes come again; still no repair
        return b_addr in (src, dst) and data[9] in repair
    step = a.next_own_step
    wanted = False
    for i in range(16):
        if i == 8:
            net.advance(1.5, drop=first_phase)    # their eager sends are spent by now
        a.publish(step, 3, net.now)
        step += 1
        net.advance(0.05, drop=first_phase if i < 8 else second_phase)
    for _ in range(20):
        net.advance(0.05, drop=second_phase)
        wanted = wanted or a.node_id in b.sync._wants
    assert b.book.contiguous(a.node_id) == 0 and wanted   # held beyond the gap, and wanted
    net.advance(3.0)
    assert b.book.contiguous(a.node_id) == c.book.contiguous(a.node_id) == 16
