"""Where every member talks to every other (a small swarm, no NAT), a newcomer's news needs
no machinery of its own (issue 12, bytes per delivered update): it is not news for the others'
anti-entropy, its certificate is asked for only if it has not brought it itself, and relays of
it ride on datagrams that go anyway.  A member *back* (a healed partition) is still news.
Fake clock and fake network only."""
from onebyte.protocol import ProtocolConfig
from onebyte.protocol.membership import MemberState
from onebyte.protocol.peerex import BRINGS_OWN_S
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import GossipKind, MessageType, parse_header, unpack_body

CFG = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5)


def body(data: bytes):
    h = parse_header(data, CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram + 200)
    return h.type, unpack_body(h.body)


def settled(n: int, quiet_s: float = 60.0):
    net = Net(CFG)
    return net, net.swarm(n, quiet_s)   # long quiet: anti-entropy backed off to its cap


def test_a_newcomer_is_not_news_for_anti_entropy_and_a_member_back_is():
    net, (a, b, c) = settled(3)
    assert a.sync.ae_interval == CFG.anti_entropy_max_interval_s
    d = net.add(4, bootstrap=[net.addr_of[a.node_id]])
    net.deliver()
    net.advance(3.0)
    assert all(e.members.get(d.node_id) is not None for e in (a, b, c))
    assert a.sync.ae_interval == b.sync.ae_interval == CFG.anti_entropy_max_interval_s
    assert d.sync.ae_interval < CFG.anti_entropy_max_interval_s   # the newcomer compares at once
    # c falls silent until the others hold it dead, then talks again: news for them.
    c_addr = net.addr_of[c.node_id]
    net.advance(30.0, drop=lambda data, src, dst: c_addr in (src, dst))
    assert a.members.get(c.node_id).state == MemberState.DEAD
    assert a.sync.ae_interval == CFG.anti_entropy_max_interval_s   # a death is not news
    net.advance(2 * CFG.reconnect_interval_s)
    assert a.members.get(c.node_id).live
    assert a.sync.ae_interval < CFG.anti_entropy_max_interval_s


def peers_reqs_naming(net, src_addr, node_id, since=0) -> int:
    return sum(1 for data, src, _ in net.log[since:] if src == src_addr
               and data[9] == MessageType.PEERS_REQ and isinstance(body(data)[1][0], list)
               and node_id in body(data)[1][0])


def test_a_newcomer_that_reaches_us_itself_is_not_asked_for():
    net, engines = settled(5, quiet_s=20.0)
    mark = len(net.log)
    x = net.add(9, bootstrap=[net.addr_of[engines[0].node_id]])
    net.deliver()
    net.advance(BRINGS_OWN_S + 10.0)
    for e in engines:
        assert e.members.get(x.node_id) is not None and e.members.get(x.node_id).live
    asked = sum(peers_reqs_naming(net, net.addr_of[e.node_id], x.node_id, mark) for e in engines)
    assert asked == 0


def test_a_newcomer_that_cannot_reach_us_is_asked_for_after_the_wait():
    net, engines = settled(4, quiet_s=20.0)
    far = engines[3]
    far_addr = net.addr_of[far.node_id]
    mark = len(net.log)
    x = net.add(9, bootstrap=[net.addr_of[engines[0].node_id]])
    x_addr = net.addr_of[x.node_id]
    cut = lambda data, src, dst: {src, dst} == {x_addr, far_addr}   # noqa: E731
    net.deliver(cut)
    net.advance(BRINGS_OWN_S - 1.0, drop=cut)
    assert peers_reqs_naming(net, far_addr, x.node_id, mark) == 0
    net.advance(CFG.peer_exchange_interval_s + 3.0, drop=cut)
    assert peers_reqs_naming(net, far_addr, x.node_id, mark) >= 1
    assert far.members.get(x.node_id) is not None and far.members.get(x.node_id).live


def test_relayed_member_news_rides_only_on_datagrams_that_go_anyway():
    net, engines = settled(6, quiet_s=20.0)
    mark = len(net.log)
    net.add(9, bootstrap=[net.addr_of[engines[0].node_id]])
    net.deliver()
    net.advance(10.0)
    own = {net.addr_of[e.node_id] for e in engines}
    gossip_only = [b for data, src, _ in net.log[mark:] if src in own
                   for t, b in [body(data)] if t == MessageType.PUSH and not b[2]]
    assert gossip_only == []
    tags = [it for data, src, _ in net.log[mark:] if src in own
            for it in body(data)[1][1] if it[0] == GossipKind.TAG]
    assert tags   # relayed all the same, on pings, acks, digests and records


def test_a_suspicion_still_goes_in_a_push_of_its_own():
    net, engines = settled(4, quiet_s=20.0)
    victim = engines[3]
    v_addr = net.addr_of[victim.node_id]
    mark = len(net.log)
    net.advance(8.0, drop=lambda data, src, dst: v_addr in (src, dst))
    own = {net.addr_of[e.node_id] for e in engines[:3]}
    kinds = {it[0] for data, src, _ in net.log[mark:] if src in own
             for t, b in [body(data)] if t == MessageType.PUSH and not b[2] for it in b[1]}
    assert kinds & {GossipKind.SUSPECT, GossipKind.DEAD}


def test_relayed_tags_leave_the_queue_after_tag_limit_and_the_rest_after_the_limit():
    from onebyte.protocol.dissemination import TransmitLimitedQueue
    from onebyte.protocol.identity import CERT_SIZE
    from onebyte.protocol.wire import encode_alive, encode_suspect

    class Peer:
        def __init__(self, node_id):
            self.node_id, self.known = node_id, {}

    def cert(i):
        return bytes([i]) * (CERT_SIZE - 8) + i.to_bytes(8, "little")

    q = TransmitLimitedQueue(16)
    relayed, own, suspect = b"r" * 16, b"o" * 16, b"s" * 16
    q.push(relayed, encode_alive(cert(1), None))
    q.push(own, encode_alive(cert(2), None), own=True)
    q.push(suspect, encode_suspect(suspect, 0))
    q.tag_limit = 2
    assert q.urgent()   # the suspicion
    for _ in range(2):
        q.take(1000, 8, to=Peer(b"p" * 16))
    assert len(q) == 2   # the relayed TAG is gone; our own and the suspicion keep going
    for _ in range(6):
        q.take(1000, 8, to=Peer(b"p" * 16))
    assert len(q) == 0
    q.push(relayed, encode_alive(cert(1), None))
    assert not q.urgent()
