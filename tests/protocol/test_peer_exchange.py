"""Peer exchange repairs a certificate lost on its way (fake network, fake clock).

A node remembers which certificates it sent each member, so as not to send them again; a
datagram that carried one and was lost would leave the member without it for good, unless
peer exchange notices: PEERS_REQ counts the asker's live nodes per bucket of node ids."""
from collections import Counter

import pytest

from onebyte.protocol import ProtocolConfig
from onebyte.protocol.membership import MEMBER_BUCKETS, Membership, member_bucket
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import Alive, WireError, decode_gossip, parse_header, unpack_body

CFG = ProtocolConfig(swarm_id=SWARM)


def carries_alive_of(data: bytes, eng) -> bool:
    h = parse_header(data, CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram)
    _, gossip, _ = unpack_body(h.body)
    key = eng.session.cert[:32]
    return any(isinstance(item := decode_gossip(g), Alive) and item.cert[:32] == key for g in gossip)


def test_a_certificate_lost_on_its_way_comes_again_through_peer_exchange():
    """b and c cannot talk (as behind two NATs); b learns c only from a, and everything of
    a's that carries c's certificate in the first seconds is lost.  a believes b holds it."""
    net = Net(CFG)
    a = net.add(1)
    first = net.addr_of[a.node_id]
    b, c = net.add(2, bootstrap=[first]), net.add(3, bootstrap=[first])
    b_addr, c_addr = net.addr_of[b.node_id], net.addr_of[c.node_id]
    until = 5.0

    def drop(data, src, dst):
        return {src, dst} == {b_addr, c_addr} or (
            dst == b_addr and net.now < until and carries_alive_of(data, c))

    net.advance(until, drop=drop)
    assert b.members.get(c.node_id) is None
    assert a.members.get(b.node_id).known.get(c.node_id) is not None   # a believes it went
    net.advance(60.0, drop=drop)
    assert b.members.get(c.node_id) is not None and b.members.get(c.node_id).live


def test_bucket_counts_and_what_an_asker_lacks():
    net = Net(CFG)
    a = net.add(1)
    first = net.addr_of[a.node_id]
    others = [net.add(s, bootstrap=[first]) for s in range(2, 7)]
    net.advance(5.0)
    counts = a.members.bucket_counts(a.node_id)
    assert len(counts) == MEMBER_BUCKETS and sum(counts) == 6
    asker = others[0]
    theirs = Membership(CFG).bucket_counts(asker.node_id)   # it knows nobody but itself
    held = Counter(member_bucket(e.node_id) for e in [a] + others)
    expected = {b for b, k in held.items() if k > (b == member_bucket(asker.node_id))}
    assert expected and a.members.lacking(theirs, a.node_id) == expected
    assert a.members.lacking(counts, a.node_id) == set()
    assert a.members.lacking(None, a.node_id) == set()   # an asker that sends no counts
    for bad in (b"x" * 31, [1] * 32, 7):
        with pytest.raises(WireError):
            a.members.lacking(bad, a.node_id)
