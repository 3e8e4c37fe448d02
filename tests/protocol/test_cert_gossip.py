"""Membership gossip sends a certificate only to peers that lack it (issue 12): an ALIVE item
is skipped for its own subject and for a peer known to hold that certificate (it sent it to
us, or we sent it to it), and a PEERS answer lists only certificates the asker lacks.  Fake
clock and fake network only."""
from onebyte.protocol import ProtocolConfig
from onebyte.protocol.dissemination import TransmitLimitedQueue
from onebyte.protocol.identity import CERT_SIZE
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import (Alive, GossipKind, MessageType, alive_tag, decode_gossip,
                                   encode_alive, encode_suspect, parse_header, unpack_body)

CFG = ProtocolConfig(swarm_id=SWARM)


class Peer:
    """What the queue reads of a Member: its id and the certificates it holds."""

    def __init__(self, node_id: bytes):
        self.node_id = node_id
        self.known: dict = {}


def cert_of(i: int) -> bytes:
    return bytes([i]) * (CERT_SIZE - 8) + i.to_bytes(8, "little")


def test_alive_goes_once_to_a_peer_and_never_to_its_subject():
    q = TransmitLimitedQueue(16)
    x, y = b"x" * 16, b"y" * 16
    q.push(x, encode_alive(cert_of(1), ("10.0.0.1", 7000)))
    to_y, to_x = Peer(y), Peer(x)
    assert q.take(1000, 10, to=to_y) == [encode_alive(cert_of(1), ("10.0.0.1", 7000))]
    assert to_y.known[x] == alive_tag(cert_of(1), 0)
    assert q.take(1000, 10, to=to_y) == []   # it holds it now: no bytes
    assert q.take(1000, 10, to=to_x) == []   # the subject holds its own certificate
    assert len(q) == 1                       # still there for peers that lack it
    assert q.take(1000, 10, to=Peer(b"z" * 16))
    # A newer certificate (or another NatKind) about x is news again for y.
    q.push(x, encode_alive(cert_of(2), ("10.0.0.1", 7000)))
    assert q.take_into([1000], 10, to_y) == [[encode_alive(cert_of(2), ("10.0.0.1", 7000))]]
    assert q.take_into([1000], 10, to_y) == [[]]


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
