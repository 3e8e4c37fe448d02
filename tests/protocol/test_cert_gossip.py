"""Membership gossip sends a certificate only to peers that lack it (issue 12): an ALIVE item
is skipped for its own subject and for a peer known to hold that certificate, goes to the
others as a TAG (no certificate), and a receiver that lacks it asks the sender for it; a
PEERS answer lists only certificates the asker lacks.  Fake clock and fake network only."""
import msgpack
import pytest

from onebyte.protocol import messages as msg
from onebyte.protocol import ProtocolConfig
from onebyte.protocol.dissemination import TransmitLimitedQueue
from onebyte.protocol.identity import CERT_SIZE
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import (Alive, AliveTag, GossipKind, MessageType, alive_tag,
                                   WireError, decode_gossip, encode_alive, encode_alive_tag,
                                   encode_suspect, parse_header, unpack_body)

CFG = ProtocolConfig(swarm_id=SWARM)


class Peer:
    """What the queue reads of a Member: its id and the certificates it holds."""

    def __init__(self, node_id: bytes):
        self.node_id = node_id
        self.known: dict = {}


def cert_of(i: int) -> bytes:
    return bytes([i]) * (CERT_SIZE - 8) + i.to_bytes(8, "little")


def cert_at(i: int, generation: int, incarnation: int) -> bytes:
    c = cert_of(i)
    return c[:64] + generation.to_bytes(8, "little") + incarnation.to_bytes(4, "little") + c[76:]


def test_alive_goes_as_a_tag_and_never_to_its_subject_nor_to_a_holder():
    q = TransmitLimitedQueue(16)
    x, y = b"x" * 16, b"y" * 16
    q.push(x, encode_alive(cert_at(1, 5, 0), ("10.0.0.1", 7000)))
    to_y, to_x = Peer(y), Peer(x)
    tag = encode_alive_tag(x, 5, 0)
    assert decode_gossip(msgpack.unpackb(tag)) == AliveTag(x, 5, 0, 0)
    assert q.take(1000, 10, to=to_y) == [tag]
    assert q.take(1000, 10, to=to_x) == []   # the subject holds its own certificate
    to_y.known[x] = alive_tag(cert_at(1, 5, 0), 0)  # y told us it holds it (a TAG, or ALIVE)
    assert q.take(1000, 10, to=to_y) == []
    assert len(q) == 1                       # still there for peers that lack it
    assert q.take(1000, 10, to=Peer(b"z" * 16)) == [tag]
    # A new generation (or another NatKind) about x is news again for y.
    q.push(x, encode_alive(cert_at(2, 6, 0), ("10.0.0.1", 7000), version="onebyte 9"))
    tag2 = encode_alive_tag(x, 6, 0, 0, "onebyte 9")
    assert q.take_into([1000], 10, to_y) == [[tag2]]
    assert len(tag2) < 60 < len(encode_alive(cert_at(2, 6, 0), ("10.0.0.1", 7000)))
    # A refutation by its subject goes whole: a peer holding x suspect must not wait.
    whole = encode_alive(cert_at(3, 6, 1), ("10.0.0.1", 7000))
    q.push(x, whole, whole=True)
    assert q.take(1000, 10, to=to_y) == [whole]


def test_skipped_peers_count_toward_the_limit_and_accusations_always_go():
    q = TransmitLimitedQueue(16)
    x = b"x" * 16
    q.push(x, encode_alive(cert_of(1), None))
    for _ in range(3):
        assert q.take(1000, 3, to=Peer(x)) == []
    assert len(q) == 0   # given its chances: gone, as with any item past the limit
    # A SUSPECT about x goes even to x (it must hear it to refute).
    q.push(x, encode_suspect(x, 0))
    assert q.take(1000, 3, to=Peer(x)) == [encode_suspect(x, 0)]


def alive_items(net: Net, src, dst) -> list:
    """(message type, Alive) for every ALIVE item src sent dst."""
    out = []
    cfg = net.config
    for data, s, d in net.log:
        if s != src or d != dst:
            continue
        h = parse_header(data, cfg.protocol_version, cfg.swarm_tag, cfg.max_datagram + 200)
        if h.type == MessageType.JOIN:
            continue
        _, gossip, _ = unpack_body(h.body)
        for item in gossip:
            if item and item[0] == GossipKind.ALIVE:
                out.append((h.type, decode_gossip(item)))
    return out


def test_a_swarm_sends_each_certificate_to_each_peer_at_most_once_per_sender():
    net = Net(CFG)
    engines = [net.add(1)]
    first = net.addr_of[engines[0].node_id]
    for seed in range(2, 7):
        engines.append(net.add(seed, bootstrap=[first]))
    net.deliver()
    net.advance(30.0)
    for e in engines:   # everyone knows everyone
        assert len(e.members.live_members()) == len(engines) - 1
    for src in engines:
        for dst in engines:
            if src is dst:
                continue
            items = alive_items(net, net.addr_of[src.node_id], net.addr_of[dst.node_id])
            subjects = [it.cert[:32] for _, it in items if isinstance(it, Alive)]
            assert dst.identity.public_bytes() not in subjects   # never its own
            assert len(subjects) == len(set(subjects))         # each at most once


def settled_swarm(n: int) -> tuple:
    """n engines that all bootstrapped from the first, 20 s later (everyone knows everyone)."""
    net = Net(CFG)
    return net, net.swarm(n)


def payloads(net: Net, src, dst, mtype) -> list:
    cfg, out = net.config, []
    for data, s, d in net.log:
        if s == src and d == dst:
            h = parse_header(data, cfg.protocol_version, cfg.swarm_tag, cfg.max_datagram + 200)
            if h.type == mtype:
                out.append(unpack_body(h.body))
    return out


def test_a_member_heard_of_by_tag_only_is_asked_for_and_learned():
    """B and C cannot reach each other: B hears of C only in A's TAG items (riding on A's
    datagrams, or in its peer-exchange answer), asks A for C's certificate (PEERS_REQ naming
    C) and learns C from A's PEERS answer."""
    net = Net(CFG)
    a = net.add(1)
    first = net.addr_of[a.node_id]
    b = net.add(2, bootstrap=[first])
    net.deliver()
    net.advance(2.0)
    c = net.add(3, bootstrap=[first])
    ab, cb = net.addr_of[b.node_id], net.addr_of[c.node_id]
    cut = lambda data, s, d: {s, d} == {ab, cb}   # noqa: E731
    net.deliver(cut)
    net.advance(CFG.peer_exchange_interval_s + 2.0, drop=cut)   # one peer-exchange round
    assert b.members.get(c.node_id) is not None and b.members.get(c.node_id).live
    asked = [p for p, _, _ in payloads(net, ab, first, MessageType.PEERS_REQ) if p is not None]
    assert [c.node_id] in asked
    tags = [decode_gossip(it) for mtype in MessageType   # any datagram from A may carry them
            for _, g, _ in payloads(net, first, ab, mtype) for it in g if it[0] == GossipKind.TAG]
    assert any(t.node_id == c.node_id for t in tags)
    answers = [decode_gossip(it) for _, g, _ in payloads(net, first, ab, MessageType.PEERS) for it in g]
    assert any(isinstance(it, Alive) and it.cert == c.session.cert for it in answers)


def test_a_tag_of_a_held_certificate_is_noted_and_not_asked_for():
    net, engines = settled_swarm(4)
    a, b = engines[0], engines[1]
    x = engines[2]
    held = a.members.get(x.node_id)
    before = len(net.log)
    sender = a.members.get(b.node_id)
    a.certs.on_tag(sender, AliveTag(x.node_id, held.generation, held.incarnation, 0), net.now)
    a.certs.ask(sender, net.now)
    a_addr = net.addr_of[a.node_id]
    net.collect(a_addr)
    assert sender.known[x.node_id] == alive_tag(held.cert, 0)
    assert len(net.log) == before   # nothing asked
    # A newer incarnation than ours is asked for, once within ASK_AGAIN_S.
    for _ in range(2):
        a.certs.on_tag(sender, AliveTag(x.node_id, held.generation, held.incarnation + 1, 0), net.now)
        a.certs.ask(sender, net.now)
    net.collect(a_addr)
    sent = [d for d, s, _ in net.log[before:] if s == a_addr]
    assert len(sent) == 1
    h = parse_header(sent[0], CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram + 200)
    assert h.type == MessageType.PEERS_REQ and unpack_body(h.body)[0] == [x.node_id]


def test_peers_req_naming_members_is_answered_with_those_only_and_a_bad_list_is_dropped():
    net, engines = settled_swarm(5)
    a, b = engines[0], engines[1]
    m_b = a.members.get(b.node_id)
    want = [engines[3].node_id, b"?" * 16]   # one member, one stranger
    a.certs.on_peers_req(m_b, msg.PeersReq.decode(want), net.now)
    data, _ = a.outbox.datagrams[-1]
    h = parse_header(data, CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram + 200)
    items = [decode_gossip(it) for it in unpack_body(h.body)[1]]
    assert h.type == MessageType.PEERS
    assert [it.cert for it in items] == [engines[3].session.cert]
    for bad in ([b"short"], [engines[3].node_id] * 33, "x"):
        with pytest.raises(WireError):
            a.certs.on_peers_req(m_b, msg.PeersReq.decode(bad), net.now)


def test_peer_exchange_between_agreeing_views_sends_nothing_back():
    net, engines = settled_swarm(5)
    a, b = engines[0], engines[1]
    m_b = a.members.get(b.node_id)
    m_b.known.clear()   # nothing known of what b holds: only the counts can tell
    counts = b.members.bucket_counts(b.node_id)
    assert counts == a.members.bucket_counts(a.node_id)
    before = len(a.outbox.datagrams)
    a.certs.on_peers_req(m_b, msg.PeersReq.decode(counts), net.now)
    assert len(a.outbox.datagrams) == before        # same counts everywhere: no answer
    fewer = bytearray(counts)
    fewer[next(i for i, c in enumerate(counts) if c)] -= 1
    a.certs.on_peers_req(m_b, msg.PeersReq.decode(bytes(fewer)), net.now)
    assert len(a.outbox.datagrams) == before + 1    # it lacks one: TAGs go
