"""The typed messages (protocol/messages.py): one decoder and encoder per MessageType, round
trips, malformed payloads as WireError, and docs/protocol.md's table in step with the enum."""
import re
from pathlib import Path

import msgpack
import pytest

from onebyte.protocol import messages as msg
from onebyte.protocol.digests import ASK_OWN, ROOT
from onebyte.protocol.wire import MessageType, NatKind, WireError

A, B = bytes(range(16)), bytes(range(16, 32))
INNER = bytes([1]) + bytes(8) + bytes([int(MessageType.PING)]) + bytes(40)   # a datagram's header shape
DIGEST = bytes(range(256))
SAMPLES = [
    msg.Hello(("10.0.0.1", 7000)), msg.Hello(None), msg.Hello(("fd00::1", 7000, 0, 0)),
    msg.Ping(0), msg.Ping(2 ** 40), msg.Ack(7), msg.Ack(7, ("1.2.3.4", 9)), msg.PingReq(3, A),
    msg.Push(), msg.Push(A[:8] + bytes(6) + B[:8] + (7).to_bytes(6, "little")), msg.Peers(),
    msg.Digest(DIGEST), msg.Digest(DIGEST, ASK_OWN, (b"w" * 8, b"v" * 8)), msg.Digest(b"r" * 8, ROOT),
    msg.Digest.of(bytes(4) * 60 + bytes(range(1, 17)), False, None),   # sparse on the wire
    msg.Vector((1, 5), ((A, 3), (B, 9))), msg.Vector((), ()),
    msg.Pull(((A, 1),)), msg.Pull(((A, 1), (B, 7)), 900), msg.Pull.padded([(A, 1)], 1100),
    msg.Records(), msg.Records(((A, 40),)),
    msg.PeersReq(bytes(32)), msg.PeersReq(None), msg.PeersReq(asked=(A, B)), msg.PeersReq(asked=()),
    msg.Relay(True, A, INNER), msg.Relay(False, B, INNER),
    msg.PunchReq(A), msg.Punch(B, ("5.6.7.8", 4000), NatKind.NAT),
]


def payload(m):
    return msgpack.unpackb(m.encode(), raw=False)


def test_every_message_type_but_join_has_one_decoder_and_one_class():
    assert set(msg.DECODERS) == set(MessageType) - {MessageType.JOIN}
    assert len({cls.TYPE for cls in msg.MESSAGES}) == len(msg.MESSAGES)


@pytest.mark.parametrize("m", SAMPLES, ids=lambda m: type(m).__name__)
def test_decode_of_encode_is_the_message(m):
    assert msg.decode(m.TYPE, payload(m)) == m


def test_sparse_and_padding_are_wire_forms_only():
    packed = bytes(4) * 60 + bytes(range(1, 17))
    d = msg.Digest.of(packed, False, None)
    assert len(d.encode()) < len(msg.Digest(packed).encode())   # sent sparse
    assert msg.decode(MessageType.DIGEST, payload(d)).hashes == packed
    p = msg.Pull.padded([(A, 1)], 1100)
    assert p.wants == ((A, 1),) and p.padding > 900


@pytest.mark.parametrize("mtype,bad", [
    (MessageType.PING, -1), (MessageType.PING, "x"), (MessageType.PING, True),
    (MessageType.ACK, [1.5, ["1.2.3.4", 9]]), (MessageType.ACK, None),
    (MessageType.PING_REQ, [1]), (MessageType.PING_REQ, [1, b"short"]),
    (MessageType.DIGEST, b"x" * 10), (MessageType.DIGEST, [DIGEST, -1, None]),
    (MessageType.DIGEST, [DIGEST, 0, [b"", b"v"]]), (MessageType.DIGEST, [b"r" * 9, ROOT, None]),
    (MessageType.VECTOR, [[], [[A, -1]]]), (MessageType.VECTOR, [[], [[A, 1]] * 81]),
    (MessageType.VECTOR, [list(range(65)), []]), (MessageType.VECTOR, [[]]),
    (MessageType.PULL, [[A, 1]] * 25), (MessageType.PULL, "x"), (MessageType.PULL, [[b"short", 1]]),
    (MessageType.RECORDS, "more"), (MessageType.RECORDS, [[A, -1]]),
    (MessageType.PEERS_REQ, b"x" * 31), (MessageType.PEERS_REQ, [A] * 33), (MessageType.PEERS_REQ, 5),
    (MessageType.RELAY, [2, A, INNER]), (MessageType.RELAY, [0, A, b"short"]),
    (MessageType.RELAY, [0, A, INNER[:9] + bytes([int(MessageType.RELAY)]) + INNER[10:]]),
    (MessageType.RELAY, [1, A, INNER[:9] + bytes([int(MessageType.JOIN)]) + INNER[10:]]),
    (MessageType.PUNCH_REQ, b"short"), (MessageType.PUNCH, [A, "not an address", 0]),
    (MessageType.PUNCH, [A, ["1.2.3.4", 5], 3]),
])
def test_a_payload_that_does_not_fit_its_type_is_malformed(mtype, bad):
    with pytest.raises(WireError) as e:
        msg.decode(mtype, bad)
    assert e.value.reason == "malformed"


def test_lenient_fields_stay_lenient():
    # What older or newer peers may send and is not an error: extra DIGEST fields, a bucket
    # number out of range in a VECTOR (skipped), an observed address we cannot read (none).
    assert msg.decode(MessageType.DIGEST, [DIGEST, 0, None, "later"]) == msg.Digest(DIGEST)
    assert msg.decode(MessageType.VECTOR, [[1, 99, "x"], []]) == msg.Vector((1,), ())
    assert msg.decode(MessageType.ACK, [4, "garbage"]) == msg.Ack(4)
    assert msg.decode(MessageType.HELLO, 17) == msg.Hello(None)


def test_the_docs_message_table_names_every_type_with_its_number():
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    rows = dict((int(n), name) for n, name in re.findall(r"^\| (\d+) \| ([A-Z_]+) \| (?:MAC|cert)", text, re.M))
    assert rows == {int(t): t.name for t in MessageType}


def test_push_ihave_entries_and_foreign_payloads():
    p = msg.Push(A[:8] + (5).to_bytes(6, "little"))
    assert p.entries() == [(A[:8], 5)]
    assert msg.Push.decode(payload(p)) == p
    # an older sender's nil, or anything that is not whole entries, is a plain PUSH
    for junk in (None, b"x" * 13, [1, 2], b"x" * (msg.IHAVE_SIZE * (msg.IHAVE_MAX + 1))):
        assert msg.Push.decode(junk) == msg.Push()
