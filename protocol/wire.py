"""Datagram wire format (spec: docs/protocol.md).

    version u8 | swarm_tag 8 | type u8 | flags u8 | sender 16 | counter u64le   (35-byte header)
    [cert 140]                    if flags & FLAG_CERT
    body                          msgpack [payload, gossip[], records[]]
    mac 16                        keyed blake2b over everything before it
                                  (JOIN instead: zero padding and a 64-byte Ed25519 signature)

The header is fixed-size and parsed with struct, so foreign, truncated and
unauthenticated datagrams are rejected before msgpack ever sees the body.  Below
the datagram: the codecs of the two lists every body carries, membership gossip
items and signed records.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import msgpack

from .identity import CERT_SIZE, NODE_ID_SIZE, SIG_SIZE, parse_cert


class MessageType(IntEnum):
    """Append-only: these numbers are wire format.  Never renumber or reuse."""
    JOIN = 1        # unauthenticated: sender cert + padding; asks for the receiver's cert
    HELLO = 2       # answer to JOIN: receiver's cert, MAC'd
    PING = 3        # payload: seq
    ACK = 4         # payload: seq
    PING_REQ = 5    # payload: [seq, target node id]
    PUSH = 6        # payload: nil; carries gossip and fresh records
    DIGEST = 7      # payload: bucket hashes of the version vector
    VECTOR = 8      # payload: [buckets, [[origin, step], ...]]
    PULL = 9        # payload: [[origin, from_step], ...]
    RECORDS = 10    # payload: nil; records answering a PULL
    PEERS_REQ = 11  # payload: live nodes per member bucket (32-byte bin), or nil
    PEERS = 12      # payload: nil; gossip holds ALIVE items
    RELAY = 13      # payload: [0, dest node id, inner datagram] to a relay,
                    #          [1, src node id, inner datagram] from it (protocol/nat.py)
    PUNCH_REQ = 14  # payload: target node id: "introduce me to it"
    PUNCH = 15      # payload: [peer node id, peer's observed addr, peer's NatKind]: send to it now


class NatKind(IntEnum):
    """Append-only: what a node announces about its own reachability (ALIVE items)."""
    OPEN = 0       # reachable at its address, or cannot tell (no bound address known)
    NAT = 1        # behind a NAT with one mapping for every peer (cone), or not yet known
    SYMMETRIC = 2  # behind a NAT that maps each peer to another port: reach it via a relay


class GossipKind(IntEnum):
    """Append-only membership gossip item kinds."""
    ALIVE = 0    # [0, cert, addr|nil] or [0, cert, addr|nil, NatKind]
    SUSPECT = 1  # [1, node_id, incarnation]
    DEAD = 2     # [2, node_id, incarnation]
    LEAVE = 3    # [3, node_id, generation, incarnation, sig]
    PROOF = 4    # [4, record_a, record_b]: two signed records of one origin, one step, other q
    TAG = 5      # [5, node_id, generation, incarnation, NatKind(, version)]: an ALIVE announced
                 # without its certificate; a receiver that lacks it asks the sender (PEERS_REQ)
    AMEND = 6    # [6, number, kind, key, step, new_key, [link sigs], [[authority key, sig], ...]]:
                 # a membership amendment signed by the genesis authority (protocol/amendments.py)


HEADER = struct.Struct("<B8sBB16sQ")
HEADER_SIZE = HEADER.size  # 35
MAC_SIZE = 16
FLAG_CERT = 0x01
# The sender's NatKind, in every datagram (MAC'd, or signed in JOIN): 0 OPEN, 1 NAT, 2 SYMMETRIC.
NAT_FLAGS_SHIFT = 1
NAT_FLAGS = 0x06
KNOWN_FLAGS = FLAG_CERT | NAT_FLAGS
JOIN_MIN_SIZE = 300  # JOIN is padded: the HELLO it triggers (<= ~280 bytes: header, certificate,
                     # MAC and the longest observed address) must not be larger
_TYPES = frozenset(int(t) for t in MessageType)


class WireError(Exception):
    """A datagram failed to parse; .reason is the counted drop reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Header:
    __slots__ = ("version", "tag", "type", "flags", "sender", "counter", "cert", "body", "mac", "signed")

    def __init__(self, data: bytes):
        (self.version, self.tag, self.type, self.flags, self.sender,
         self.counter) = HEADER.unpack_from(data)


def parse_header(data: bytes, version: int, tag: bytes, max_size: int) -> Header:
    """Cheap checks only (no crypto, no msgpack).  Raises WireError."""
    if len(data) > max_size:
        raise WireError("oversize")
    if len(data) < 1:
        raise WireError("truncated")
    if data[0] != version:
        raise WireError("wrong_version")
    if len(data) < HEADER_SIZE:
        raise WireError("truncated")
    h = Header(data)
    if h.tag != tag:
        raise WireError("wrong_swarm")
    if h.type not in _TYPES:
        raise WireError("unknown_type")
    if h.flags & ~KNOWN_FLAGS:
        raise WireError("malformed")
    pos = HEADER_SIZE
    if h.flags & FLAG_CERT:
        if len(data) < pos + CERT_SIZE:
            raise WireError("truncated")
        h.cert = data[pos:pos + CERT_SIZE]
        pos += CERT_SIZE
    else:
        h.cert = None
    if h.type == MessageType.JOIN:
        # JOIN: cert, zero padding, then an Ed25519 signature by the cert's key over all before.
        if h.cert is None:
            raise WireError("malformed")
        if len(data) < JOIN_MIN_SIZE:
            raise WireError("truncated")
        h.body, h.mac, h.signed = data[pos:-SIG_SIZE], data[-SIG_SIZE:], data[:-SIG_SIZE]
        return h
    if len(data) < pos + MAC_SIZE + 1:
        raise WireError("truncated")
    h.body = data[pos:-MAC_SIZE]
    h.mac = data[-MAC_SIZE:]
    h.signed = data[:-MAC_SIZE]
    return h


def nat_of_flags(flags: int) -> int:
    """The sender's NatKind from a header's flags (3, unassigned, reads as SYMMETRIC)."""
    return min((flags & NAT_FLAGS) >> NAT_FLAGS_SHIFT, NatKind.SYMMETRIC)


def pack_header(version: int, tag: bytes, mtype: int, sender: bytes, counter: int,
                cert: bytes | None, nat: int = 0) -> bytes:
    flags = (FLAG_CERT if cert else 0) | (int(nat) << NAT_FLAGS_SHIFT)
    head = HEADER.pack(version, tag, mtype, flags, sender, counter)
    return head + cert if cert else head


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")


def pack_body(payload: bytes, gossip: list, records: list) -> bytes:
    """payload is already msgpack-packed; gossip/records are lists of packed items."""
    return (b"\x93" + payload + _array_header(len(gossip)) + b"".join(gossip)
            + _array_header(len(records)) + b"".join(records))


BODY_OVERHEAD = 1 + 3 + 3  # outer array + worst-case headers of the two inner arrays


def unpack_body(body: bytes) -> tuple:
    """(payload, gossip, records).  Raises WireError('malformed')."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True,
                              max_str_len=256, max_bin_len=2048, max_array_len=512, max_map_len=0,
                              max_ext_len=0)
    except Exception:  # msgpack raises many types on garbage
        raise WireError("malformed") from None
    if not isinstance(obj, list) or len(obj) != 3 or not isinstance(obj[1], list) \
            or not isinstance(obj[2], list):
        raise WireError("malformed")
    return obj[0], obj[1], obj[2]


def packb(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


NIL = packb(None)   # the payload of HELLO, PUSH, RECORDS and PEERS


def is_node_id(x) -> bool:
    return isinstance(x, bytes) and len(x) == NODE_ID_SIZE


def is_uint(x, limit: int = 2 ** 63) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < limit


def decode_addr(obj):
    """Addresses are opaque tuples of str/int (host, port[, flowinfo, scope]); None if invalid."""
    if not isinstance(obj, list) or not 2 <= len(obj) <= 4:
        return None
    for part in obj:
        if isinstance(part, bool) or not isinstance(part, (str, int)):
            return None
        if isinstance(part, str) and len(part) > 64:
            return None
        if isinstance(part, int) and not 0 <= part < 2 ** 32:
            return None
    return tuple(obj)


# ---------------------------------------------------------------- membership gossip items
# Each item is one msgpack array whose first element is its GossipKind (docs/protocol.md).
@dataclass(frozen=True)
class Alive:
    cert: bytes        # CERT_SIZE bytes; its signature is checked only if it is news
    addr: tuple | None  # the relayer's view of the subject's address (None: absent or invalid)
    nat: int = NatKind.OPEN   # the subject's NatKind as the sender knows it (unsigned: a hint)
    version: str | None = None  # the subject's software version (unsigned: shown to operators only)


@dataclass(frozen=True)
class AliveTag:
    """An ALIVE item without its certificate: "I hold node_id's certificate at (generation,
    incarnation)".  Most receivers hold it already (40 bytes instead of 180 per relay); one
    that does not asks the sender for the certificate."""
    node_id: bytes
    generation: int
    incarnation: int
    nat: int = NatKind.OPEN
    version: str | None = None


@dataclass(frozen=True)
class Suspect:
    node_id: bytes
    incarnation: int


@dataclass(frozen=True)
class Dead:
    node_id: bytes
    incarnation: int


@dataclass(frozen=True)
class Leave:
    node_id: bytes
    generation: int
    incarnation: int
    sig: bytes         # by the leaver, over leave_message(...)


@dataclass(frozen=True)
class ProofItem:
    record_a: bytes    # canonical records (with the origin's key): protocol/equivocation.py
    record_b: bytes


@dataclass(frozen=True)
class Amend:
    """A membership amendment as it travels; what it means: protocol/amendments.py."""
    number: int                 # 1, 2, ...: applied in this order, a gap waits
    kind: int                   # AmendKind
    key: bytes                  # the key admitted, revoked, or rotated away from
    step: int = 0               # REVOKE/ROTATE: the key's first step never delivered
    new_key: bytes = b""        # ROTATE: the key that takes over
    links: tuple = ()           # ROTATE: signatures of key and new_key over the link
    sigs: tuple = ()            # ((authority key, signature over the body), ...), keys ascending


MAX_AMEND_SIGS = 8    # authority signatures an amendment may carry (8 fit one datagram)


MAX_VERSION = 32   # characters of a software version in an ALIVE item


def encode_alive(cert: bytes, addr, nat: int = NatKind.OPEN, version: str | None = None) -> bytes:
    item = [GossipKind.ALIVE, cert, list(addr) if addr is not None else None]
    if nat or version:
        item.append(int(nat))
    if version:
        item.append(version[:MAX_VERSION])
    return packb(item)


def encode_alive_tag(node_id: bytes, generation: int, incarnation: int, nat: int = NatKind.OPEN,
                     version: str | None = None) -> bytes:
    item = [GossipKind.TAG, node_id, generation, incarnation, int(nat)]
    if version:
        item.append(version[:MAX_VERSION])
    return packb(item)


def _version_ok(version) -> bool:
    return version is None or (isinstance(version, str) and 0 < len(version) <= MAX_VERSION
                               and version.isprintable())


def alive_tag(cert: bytes, nat: int) -> bytes:
    """What an ALIVE item tells a receiver that already holds some certificate of its subject:
    which certificate (its last 8 bytes, inside the signature) and the NatKind.  Two ALIVE
    items with one tag are the same news; a peer known to hold it needs neither again."""
    return cert[-8:] + bytes([int(nat)])


def packed_alive_forms(packed: bytes, node_id: bytes) -> tuple | None:
    """(alive_tag, packed TAG item) of a packed ALIVE item about node_id (None for any other
    item): the gossip queue keeps both beside the item, to skip peers that already hold that
    certificate and to announce it to the others without the certificate."""
    if len(packed) < 2 or packed[1] != GossipKind.ALIVE:   # [ALIVE, ...]: a fixarray, then 0
        return None
    try:
        item = decode_gossip(msgpack.unpackb(packed, raw=False))
    except (WireError, ValueError):
        return None
    if not isinstance(item, Alive):
        return None
    _, _, generation, incarnation, _ = parse_cert(item.cert)
    return (alive_tag(item.cert, item.nat),
            encode_alive_tag(node_id, generation, incarnation, item.nat, item.version))


def encode_suspect(node_id: bytes, incarnation: int) -> bytes:
    return packb([GossipKind.SUSPECT, node_id, incarnation])


def encode_dead(node_id: bytes, incarnation: int) -> bytes:
    return packb([GossipKind.DEAD, node_id, incarnation])


def encode_leave(node_id: bytes, generation: int, incarnation: int, sig: bytes) -> bytes:
    return packb([GossipKind.LEAVE, node_id, generation, incarnation, sig])


def encode_proof(record_a: bytes, record_b: bytes) -> bytes:
    return packb([GossipKind.PROOF, record_a, record_b])


def encode_amend(a: Amend) -> bytes:
    return packb([GossipKind.AMEND, a.number, a.kind, a.key, a.step, a.new_key, list(a.links),
                  [list(s) for s in a.sigs]])


def _decode_amend(item: list) -> Amend:
    if len(item) != 8:
        raise WireError("malformed")
    _, number, kind, key, step, new_key, links, sigs = item
    if (not is_uint(number) or number < 1 or not is_uint(kind, 256) or not _is_key(key) or not is_uint(step)
            or not (new_key == b"" or _is_key(new_key)) or not isinstance(links, list) or len(links) > 2
            or not all(isinstance(x, bytes) and len(x) == SIG_SIZE for x in links)
            or not isinstance(sigs, list) or len(sigs) > MAX_AMEND_SIGS
            or not all(isinstance(x, list) and len(x) == 2 and _is_key(x[0]) and isinstance(x[1], bytes)
                       and len(x[1]) == SIG_SIZE for x in sigs)):
        raise WireError("malformed")
    return Amend(number, kind, key, step, new_key, tuple(links), tuple((k, s) for k, s in sigs))


def decode_amend(raw: bytes) -> Amend:
    """A packed AMEND item (as stored or written by `onebyte admit`); raises WireError."""
    try:
        item = msgpack.unpackb(raw, raw=False, max_bin_len=2048, max_array_len=64, max_map_len=0, max_ext_len=0)
    except Exception:  # msgpack raises many types on garbage
        raise WireError("malformed") from None
    if not isinstance(item, list) or not item or item[0] != GossipKind.AMEND:
        raise WireError("malformed")
    return _decode_amend(item)


def _is_key(x) -> bool:
    return isinstance(x, bytes) and len(x) == 32


def decode_gossip(item) -> Alive | AliveTag | Suspect | Dead | Leave | ProofItem | Amend:
    """One unpacked gossip item; raises WireError('malformed' or 'unknown_type')."""
    if not isinstance(item, list) or not item or not is_uint(item[0]):
        raise WireError("malformed")
    kind = item[0]
    if kind == GossipKind.ALIVE:
        if len(item) not in (3, 4, 5) or not isinstance(item[1], bytes) or len(item[1]) != CERT_SIZE:
            raise WireError("malformed")
        nat = item[3] if len(item) >= 4 else NatKind.OPEN
        version = item[4] if len(item) == 5 else None
        if not is_uint(nat, len(NatKind)) or not _version_ok(version):
            raise WireError("malformed")
        return Alive(item[1], decode_addr(item[2]), nat, version)
    if kind == GossipKind.TAG:
        version = item[5] if len(item) == 6 else None
        if (len(item) not in (5, 6) or not is_node_id(item[1]) or not is_uint(item[2])
                or not is_uint(item[3], 2 ** 32) or not is_uint(item[4], len(NatKind))
                or not _version_ok(version)):
            raise WireError("malformed")
        return AliveTag(item[1], item[2], item[3], item[4], version)
    if kind in (GossipKind.SUSPECT, GossipKind.DEAD):
        if len(item) != 3 or not is_node_id(item[1]) or not is_uint(item[2], 2 ** 32):
            raise WireError("malformed")
        return (Suspect if kind == GossipKind.SUSPECT else Dead)(item[1], item[2])
    if kind == GossipKind.LEAVE:
        if (len(item) != 5 or not is_node_id(item[1]) or not is_uint(item[2])
                or not is_uint(item[3], 2 ** 32) or not isinstance(item[4], bytes)
                or len(item[4]) != SIG_SIZE):
            raise WireError("malformed")
        return Leave(item[1], item[2], item[3], item[4])
    if kind == GossipKind.PROOF:
        if len(item) != 3 or not all(isinstance(r, bytes) for r in item[1:]):
            raise WireError("malformed")
        return ProofItem(item[1], item[2])
    if kind == GossipKind.AMEND:
        return _decode_amend(item)
    raise WireError("unknown_type")


# ---------------------------------------------------------------- records
# A record travels as one msgpack bin:
#     flags u8 | [origin public key 32 if flags & 1] | first_step LEB128 | body | sig 64
#     flags bits 4-7 = w:  w == 0: body = qs, n int8 bytes
#                          1 <= w <= 7: body = n LEB128 | n zigzag values of w bits, MSB first,
#                                       zero-padded to a byte
# The key is omitted when the datagram's (authenticated) sender is the origin, and
# small q values are packed below 8 bits: that is what brings bytes per update at
# the origin towards (and, for concentrated q, below) two.  The signature is over
# the decoded q bytes, so the packing is transport only.
REC_HAS_KEY = 0x01
MAX_STEP = 2 ** 53


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_leb128(rec: bytes, pos: int) -> tuple:
    value, shift = 0, 0
    while True:
        if pos >= len(rec) or shift > 56:
            raise WireError("malformed")
        b = rec[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def pack_qs(qs: bytes) -> tuple:
    """(w, body): the smallest of raw int8 and w-bit zigzag packing."""
    zz = [(511 - 2 * b) if b >= 128 else 2 * b for b in qs]   # int8 byte b -> zigzag of its value
    w = max(zz).bit_length() if zz else 0
    if w >= 8 or w == 0 and not zz:
        return 0, qs
    w = max(w, 1)
    acc = 0
    for z in zz:
        acc = (acc << w) | z
    nbits = w * len(zz)
    nbytes = (nbits + 7) // 8
    body = leb128(len(zz)) + (acc << (nbytes * 8 - nbits)).to_bytes(nbytes, "big")
    return (w, body) if len(body) < len(qs) else (0, qs)


def unpack_qs(w: int, body: bytes) -> bytes:
    n, pos = _read_leb128(body, 0)
    data = body[pos:]
    nbits = w * n
    if n < 1 or len(data) != (nbits + 7) // 8:
        raise WireError("malformed")
    acc = int.from_bytes(data, "big")
    pad = len(data) * 8 - nbits
    if acc & ((1 << pad) - 1):
        raise WireError("malformed")      # padding must be zero: one encoding per record
    acc >>= pad
    mask = (1 << w) - 1
    out = bytearray(n)
    for i in range(n - 1, -1, -1):
        z = acc & mask
        acc >>= w
        out[i] = (256 - ((z + 1) >> 1)) & 0xFF if z & 1 else z >> 1   # zigzag -> int8 byte
    if 0x80 in out:
        raise WireError("malformed")
    return bytes(out)


def encode_record(pub: bytes | None, first_step: int, qs: bytes, sig: bytes) -> bytes:
    w, body = pack_qs(qs)
    head = bytes([(w << 4) | (REC_HAS_KEY if pub is not None else 0)])
    return head + (pub or b"") + leb128(first_step) + body + sig


def decode_record(rec: bytes) -> tuple:
    """(pub or None, first_step, qs, sig) with qs as int8 bytes.  Raises WireError('malformed')."""
    if not isinstance(rec, bytes) or len(rec) < 1 + 1 + 1 + SIG_SIZE:
        raise WireError("malformed")
    flags = rec[0]
    w = flags >> 4
    if flags & 0x0E or w > 7:
        raise WireError("malformed")
    if flags & REC_HAS_KEY:
        pub, pos = rec[1:33], 33
    else:
        pub, pos = None, 1
    step, pos = _read_leb128(rec, pos)
    body = rec[pos:-SIG_SIZE]
    if step < 1 or step >= MAX_STEP or len(body) < 1 or len(rec) - pos < SIG_SIZE + 1:
        raise WireError("malformed")
    qs = unpack_qs(w, body) if w else body
    return pub, step, qs, rec[-SIG_SIZE:]
