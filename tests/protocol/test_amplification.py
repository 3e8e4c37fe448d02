"""No member can make a node an amplifier (fake network, fake clock): records served to a member
are paid for by its own bytes, at most serve_amplification (4) times, at the address they came
from; an honest puller pads its PULL so one request still earns a whole answer."""
from onebyte.protocol import messages as msg
from onebyte.protocol.testing import Raw
from onebyte.protocol import ProtocolConfig
from onebyte.protocol.testing import SWARM, Net
from onebyte.protocol.wire import MessageType, packb, parse_header

CFG = ProtocolConfig(swarm_id=SWARM, updates_per_record=4, record_linger_s=0.5)
STEPS = 4000


def kind(data: bytes):
    return parse_header(data, CFG.protocol_version, CFG.swarm_tag, CFG.max_datagram).type


def bytes_between(net, src, dst, since=0, mtype=None) -> int:
    return sum(len(d) for d, s, t in net.log[since:] if s == src and t == dst and (mtype is None or kind(d) == mtype))


def setup():
    """a holds STEPS updates of its own that b lacks (b: the puller, honest or not)."""
    net = Net(CFG)
    a, b = net.pair()
    net.publish_unseen(a, STEPS, b, seconds=2.0)
    return net, a, b, net.addr_of[a.node_id], net.addr_of[b.node_id]


def test_a_pull_flood_earns_at_most_four_times_its_bytes():
    """b asks for everything again and again with bare (unpadded) PULLs at 100 per second."""
    net, a, b, a_addr, b_addr = setup()
    ma = b.members.get(a.node_id)
    mark, counted = len(net.log), a.counters.get("records_served_bytes", 0)
    for i in range(1000):                       # 10 s at 100 PULLs/s, answers never pulled on
        b.outbox.send(Raw(MessageType.PULL, packb([[a.node_id, 1]])), ma)
        net.collect(b_addr)
        net.now += 0.01
        net.deliver(drop=lambda d, s, t: t == b_addr and kind(d) == MessageType.RECORDS)
    sent_in = bytes_between(net, b_addr, a_addr, mark)
    served = bytes_between(net, a_addr, b_addr, mark, MessageType.RECORDS)
    assert served > 0                            # it is still answered, at the price it pays
    # what it sent during the flood, and at most the credit cap it could have saved before
    assert served <= CFG.serve_amplification * sent_in + 2 * CFG.pull_serve_bytes
    assert served >= 0.8 * CFG.serve_amplification * sent_in   # and about all it paid for
    assert a.counters["serve_credit_cuts"] > 0 and a.counters["records_served_bytes"] - counted == served


def test_an_honest_padded_pull_earns_a_whole_answer_and_catches_up():
    net, a, b, a_addr, b_addr = setup()
    ma = b.members.get(a.node_id)
    b.sync.serving.held.forget(a.node_id)   # as if b had sent a nothing yet: it pays in full
    a.sync.serving.credit.forget(b.node_id)
    mark, cuts = len(net.log), a.counters["serve_credit_cuts"]
    b.sync.pull(ma, {a.node_id: STEPS}, net.now)
    net.collect(b_addr)
    (pull,) = [d for d, s, _ in net.log[mark:] if s == b_addr and kind(d) == MessageType.PULL]
    assert len(pull) >= CFG.pull_serve_bytes / CFG.serve_amplification   # padded
    net.deliver(drop=lambda d, s, t: kind(d) == MessageType.PULL and d is not pull)   # just this one
    answer = bytes_between(net, a_addr, b_addr, mark, MessageType.RECORDS)
    assert answer >= 0.5 * CFG.pull_serve_bytes and a.counters["serve_credit_cuts"] == cuts   # not cut by credit
    mark = len(net.log)
    net.deliver()
    net.advance(5.0)                                      # pulling on: padded PULL after PULL
    assert b.book.contiguous(a.node_id) == STEPS
    ratio = bytes_between(net, a_addr, b_addr, mark, MessageType.RECORDS) / bytes_between(net, b_addr, a_addr, mark)
    assert ratio <= CFG.serve_amplification


def test_a_puller_with_credit_at_its_server_pads_only_what_it_lacks():
    """b reckons its credit at a from what it sent there (half of it counts) less what a
    served it: after 1,100 bytes its PULL is bare, after a little it pads the rest, and both
    earn a whole answer."""
    net, a, b, a_addr, b_addr = setup()
    ma = b.members.get(a.node_id)
    for sent in (0, 1100, 2 * CFG.pull_serve_bytes):
        b.sync.serving.held.forget(a.node_id)
        a.sync.serving.credit.forget(b.node_id)
        b.sync.serving.sent(ma, a_addr, sent)           # what b sent a before (both ledgers)
        a.sync.serving.credit.earn(b.node_id, b_addr, sent)
        cuts, mark = a.counters["serve_credit_cuts"], len(net.log)
        b.sync.pull(ma, {a.node_id: STEPS}, net.now)
        net.collect(b_addr)
        (pull,) = [d for d, s, _ in net.log[mark:] if s == b_addr and kind(d) == MessageType.PULL]
        net.deliver(drop=lambda d, s, t: kind(d) == MessageType.PULL and d is not pull)
        answer = bytes_between(net, a_addr, b_addr, mark, MessageType.RECORDS)
        assert answer >= 0.5 * CFG.pull_serve_bytes and a.counters["serve_credit_cuts"] == cuts, sent
        if sent == 0:
            assert CFG.pull_serve_bytes / CFG.serve_amplification <= len(pull) <= CFG.max_datagram
        elif sent == 1100:
            assert 150 < len(pull) < 800                  # half of 1,100 x 4 counted: pads the rest
        else:
            assert len(pull) < 150                        # bare
        net.deliver(drop=lambda d, s, t: True)            # (nothing pulled on between rounds)


def test_credit_does_not_follow_a_member_to_another_address():
    """A member that sends from a spoofed source (a third party's address) reflects at most
    four times that datagram onto it: credit earned at its real address stays there."""
    net, a, b, a_addr, b_addr = setup()
    a.sync.serving.credit.earn(b.node_id, b_addr, 10 * CFG.pull_serve_bytes)   # b paid a lot, at b_addr
    victim = ("10.9.9.9", 7000)
    ma = b.members.get(a.node_id)
    b.outbox.send(Raw(MessageType.PULL, packb([[a.node_id, 1]])), ma)
    (data, _) = b.datagrams_to_send(net.now)[-1]
    a.datagrams_to_send(net.now)                # (drain)
    a.receive_datagram(data, victim, net.now)   # spoofed source address
    out = a.datagrams_to_send(net.now)
    reflected = sum(len(d) for d, dst in out if dst == victim)
    assert 0 < reflected <= CFG.serve_amplification * len(data)


def test_the_padding_never_makes_a_pull_oversize():
    """Where the answer's price is more than one datagram can pay (a large pull_serve_bytes,
    our certificate along), the PULL is one full datagram, never one the receiver drops."""
    cfg = ProtocolConfig(swarm_id=SWARM, pull_serve_bytes=16000)
    net = Net(cfg)
    a, b = net.pair()
    ma = b.members.get(a.node_id)
    b.sync.serving.held.forget(a.node_id)
    for confirmed in (True, False):
        ma.channel.confirmed = confirmed
        mark = len(net.log)
        b.sync.pull(ma, {a.node_id: 10_000}, net.now)
        net.collect(net.addr_of[b.node_id])
        (pull,) = [d for d, s, _ in net.log[mark:] if kind(d) == MessageType.PULL]
        assert cfg.max_datagram - 12 <= len(pull) <= cfg.max_datagram
