"""The typed messages: one frozen value per MessageType, each with its one decoder and encoder.

A datagram's payload (the first element of its body, docs/protocol.md) is decoded once, in
Engine._receive, by DECODERS[type]; handlers take the typed value and never look at raw
msgpack. A payload that does not fit its type raises WireError("malformed") before any state
changes: a counted drop. `encode()` gives the packed payload; decode(encode(m)) == m.

JOIN is absent: it carries no payload (its certificate rides in the header, see wire.py).
PUSH and PEERS carry their news as gossip and records, which every message may carry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .digests import ASK_OWN, MAX_WEIGHTS_FIELD, ROOT, ROOT_SIZE, SPARSE, root_of, sparse, unsparse
from .dissemination import DIGEST_SIZE
from .membership import MEMBER_BUCKETS
from .wire import HEADER_SIZE, MAC_SIZE, NIL, MessageType, NatKind, WireError, decode_addr, is_node_id, is_uint, packb

VECTOR_ENTRIES = 40      # [origin, step] entries a VECTOR lists (one over, for the asker's own)
VECTOR_BUCKETS = 64      # bucket numbers a VECTOR lists as complete
IHAVE_PREFIX = 8         # origin id bytes of an IHAVE entry (Push)
IHAVE_SIZE = IHAVE_PREFIX + 6   # and a 48-bit step
IHAVE_MAX = 72           # IHAVE entries per PUSH datagram (~1 KB)
MAX_PULL_ENTRIES = 24    # [origin, step] entries of a PULL, and of what a RECORDS answer holds beyond
MAX_ASKED = 32           # node ids in one PEERS_REQ (an answer holds fewer: what fits)
_TYPE = 9                # the type byte of a datagram's header (wire.HEADER)


def _steps(entries, limit: int) -> tuple:
    """[[origin, step], ...] of at most `limit` entries, as a tuple of (origin, step)."""
    if not isinstance(entries, list) or len(entries) > limit:
        raise WireError("malformed")
    for e in entries:
        if not (isinstance(e, list) and len(e) == 2 and is_node_id(e[0]) and is_uint(e[1])):
            raise WireError("malformed")
    return tuple((e[0], e[1]) for e in entries)


def _pack_steps(entries) -> list:
    return [[o, s] for o, s in entries]


@dataclass(frozen=True)
class Hello:
    """Answer to a JOIN (its certificate rides in the header): where the JOIN came from."""
    TYPE: ClassVar = MessageType.HELLO
    observed: tuple | None = None   # the joiner's address as we saw it (None: absent or invalid)

    def encode(self) -> bytes:
        return packb(list(self.observed)) if self.observed is not None else NIL

    @classmethod
    def decode(cls, payload) -> Hello:
        return cls(decode_addr(payload) if payload is not None else None)


@dataclass(frozen=True)
class Ping:
    TYPE: ClassVar = MessageType.PING
    seq: int

    def encode(self) -> bytes:
        return packb(self.seq)

    @classmethod
    def decode(cls, payload) -> Ping:
        if not is_uint(payload):
            raise WireError("malformed")
        return cls(payload)


@dataclass(frozen=True)
class Ack:
    TYPE: ClassVar = MessageType.ACK
    seq: int
    observed: tuple | None = None   # the address the PING came from (protocol/nat.py)

    def encode(self) -> bytes:
        return packb([self.seq, list(self.observed)] if self.observed is not None else self.seq)

    @classmethod
    def decode(cls, payload) -> Ack:
        observed = None
        if isinstance(payload, list) and len(payload) == 2:
            payload, observed = payload[0], decode_addr(payload[1])
        if not is_uint(payload):
            raise WireError("malformed")
        return cls(payload, observed)


@dataclass(frozen=True)
class PingReq:
    """"PING target for me" (an indirect probe, SWIM)."""
    TYPE: ClassVar = MessageType.PING_REQ
    seq: int
    target: bytes

    def encode(self) -> bytes:
        return packb([self.seq, self.target])

    @classmethod
    def decode(cls, payload) -> PingReq:
        if not (isinstance(payload, list) and len(payload) == 2 and is_uint(payload[0])
                and is_node_id(payload[1])):
            raise WireError("malformed")
        return cls(payload[0], payload[1])


@dataclass(frozen=True)
class Push:
    """Fresh records and gossip; the payload is nil, or IHAVE entries: records the sender
    holds (delivered), each IHAVE_SIZE bytes (an origin's first IHAVE_PREFIX id bytes, then
    its contiguous step, little-endian).  A receiver lacking one pulls it from the sender
    (Sync.on_push: lazy push).  A payload that is not such a list is ignored (older senders)."""
    TYPE: ClassVar = MessageType.PUSH
    ihave: bytes = b""

    def encode(self) -> bytes:
        return packb(self.ihave) if self.ihave else NIL

    @classmethod
    def decode(cls, payload) -> Push:
        if isinstance(payload, bytes) and payload and len(payload) % IHAVE_SIZE == 0 \
                and len(payload) <= IHAVE_MAX * IHAVE_SIZE:
            return cls(payload)
        return cls()

    def entries(self) -> list:
        """[(origin id prefix, step)] of the IHAVE payload."""
        b = self.ihave
        return [(b[i:i + IHAVE_PREFIX], int.from_bytes(b[i + IHAVE_PREFIX:i + IHAVE_SIZE], "little"))
                for i in range(0, len(b), IHAVE_SIZE)]


@dataclass(frozen=True)
class Digest:
    """Anti-entropy: our version-vector digest (dissemination.VersionDigest) and the weights
    digest for the divergence check. `hashes` is the whole 64-bucket digest, or with ROOT one
    short hash of it; SPARSE (a bitmap of the non-empty buckets and their hashes) is a wire
    form only, chosen by `of` when shorter."""
    TYPE: ClassVar = MessageType.DIGEST
    hashes: bytes
    flags: int = 0
    weights: tuple | None = None    # (weights digest, vv hash)

    @classmethod
    def of(cls, packed: bytes, ask_own: bool, weights: tuple | None, root: bool = False) -> Digest:
        """Our digest as ROOT (only when asked and not asking for our own origin), else SPARSE
        when that is shorter than all 64 buckets, else whole."""
        flags = ASK_OWN if ask_own else 0
        weights = tuple(weights) if weights else None
        if root and not flags:
            return cls(root_of(packed), ROOT, weights)
        if len(sparse(packed)) < len(packed):
            flags |= SPARSE
        return cls(packed, flags, weights)

    def encode(self) -> bytes:
        hashes = sparse(self.hashes) if self.flags & SPARSE else self.hashes
        return packb([hashes, self.flags, list(self.weights) if self.weights else None])

    @classmethod
    def decode(cls, payload) -> Digest:
        """Extra fields are ignored (a later version may add some); anything else is malformed."""
        if not isinstance(payload, list):
            hashes, flags, weights = payload, 0, None
        else:
            if not (3 <= len(payload) <= 8 and is_uint(payload[1], 1 << 32)):
                raise WireError("malformed")
            hashes, flags, weights = payload[0], payload[1], payload[2]
            if weights is not None and not (
                    isinstance(weights, list) and len(weights) == 2
                    and all(isinstance(w, bytes) and 0 < len(w) <= MAX_WEIGHTS_FIELD for w in weights)):
                raise WireError("malformed")
        if not isinstance(hashes, bytes):
            raise WireError("malformed")
        if flags & ROOT:
            if len(hashes) != ROOT_SIZE:
                raise WireError("malformed")
        else:
            if flags & SPARSE:
                hashes = unsparse(hashes)
            if len(hashes) != DIGEST_SIZE:
                raise WireError("malformed")
        return cls(hashes, flags, tuple(weights) if weights is not None else None)


@dataclass(frozen=True)
class Vector:
    """The answer to a DIGEST: our step per origin of the buckets that differ, and which of
    those buckets are listed whole (the asker serves what we lack there)."""
    TYPE: ClassVar = MessageType.VECTOR
    buckets: tuple       # bucket numbers (non-numbers in the payload are skipped)
    entries: tuple       # (origin, contiguous step), in the order listed

    def encode(self) -> bytes:
        return packb([list(self.buckets), _pack_steps(self.entries)])

    @classmethod
    def decode(cls, payload) -> Vector:
        if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], list)
                and len(payload[0]) <= VECTOR_BUCKETS):
            raise WireError("malformed")
        entries = _steps(payload[1], 2 * VECTOR_ENTRIES)
        return cls(tuple(b for b in payload[0] if is_uint(b, VECTOR_BUCKETS)), entries)


@dataclass(frozen=True)
class Pull:
    """"Send me each origin's records from this step on", padded so that the request pays
    for its answer (serving.Credit)."""
    TYPE: ClassVar = MessageType.PULL
    wants: tuple         # (origin, from step)
    padding: int = 0     # zero bytes after the entries

    @classmethod
    def padded(cls, wants, size: int) -> Pull:
        """A PULL whose datagram (header, MAC and body around the payload) is about `size` bytes."""
        bare = cls(tuple(wants))
        room = size - (HEADER_SIZE + MAC_SIZE + 3 + len(bare.encode()))
        return cls(bare.wants, room - 2) if room > 2 else bare

    def encode(self) -> bytes:
        return packb(_pack_steps(self.wants) + [bytes(self.padding)])

    @classmethod
    def decode(cls, payload) -> Pull:
        padding = 0
        if isinstance(payload, list) and payload and isinstance(payload[-1], bytes):
            payload, padding = payload[:-1], len(payload[-1])
        return cls(_steps(payload, MAX_PULL_ENTRIES), padding)


@dataclass(frozen=True)
class Records:
    """Records answering a PULL or a VECTOR's gaps. The last datagram of an answer cut short
    lists what its server holds beyond it (`more`), for the asker to pull on at once."""
    TYPE: ClassVar = MessageType.RECORDS
    more: tuple | None = None   # (origin, step held)

    def encode(self) -> bytes:
        return packb(_pack_steps(self.more)) if self.more else NIL

    @classmethod
    def decode(cls, payload) -> Records:
        return cls(None if payload is None else _steps(payload, MAX_PULL_ENTRIES))


@dataclass(frozen=True)
class PeersReq:
    """Peer exchange: our live-member counts per bucket (or nothing), to which the answer is
    TAG items of members we may lack; or `asked`: the node ids whose certificates we lack."""
    TYPE: ClassVar = MessageType.PEERS_REQ
    counts: bytes | None = None
    asked: tuple | None = None

    def encode(self) -> bytes:
        return packb(list(self.asked)) if self.asked is not None else packb(self.counts)

    @classmethod
    def decode(cls, payload) -> PeersReq:
        if isinstance(payload, list):
            if not (len(payload) <= MAX_ASKED and all(map(is_node_id, payload))):
                raise WireError("malformed")
            return cls(asked=tuple(payload))
        if payload is not None and not (isinstance(payload, bytes) and len(payload) == MEMBER_BUCKETS):
            raise WireError("malformed")
        return cls(counts=payload)


@dataclass(frozen=True)
class Peers:
    """The answer to a PEERS_REQ: its gossip holds the members (TAG or ALIVE items)."""
    TYPE: ClassVar = MessageType.PEERS

    def encode(self) -> bytes:
        return NIL

    @classmethod
    def decode(cls, payload) -> Peers:
        return cls()


@dataclass(frozen=True)
class Relay:
    """A datagram carried for a member behind a NAT (protocol/nat.py): `to_relay` on its way
    to the relay (node_id: its destination), else from the relay (node_id: its source)."""
    TYPE: ClassVar = MessageType.RELAY
    to_relay: bool
    node_id: bytes
    inner: bytes         # a whole datagram, sealed end to end; never a JOIN or another RELAY

    def encode(self) -> bytes:
        return packb([0 if self.to_relay else 1, self.node_id, self.inner])

    @classmethod
    def decode(cls, payload) -> Relay:
        if not (isinstance(payload, list) and len(payload) == 3 and payload[0] in (0, 1)
                and is_node_id(payload[1]) and isinstance(payload[2], bytes)
                and len(payload[2]) > HEADER_SIZE
                and payload[2][_TYPE] not in (MessageType.JOIN, MessageType.RELAY)):
            raise WireError("malformed")
        return cls(payload[0] == 0, payload[1], payload[2])


@dataclass(frozen=True)
class PunchReq:
    """"Introduce me to target" (to a member that reaches both of us directly)."""
    TYPE: ClassVar = MessageType.PUNCH_REQ
    target: bytes

    def encode(self) -> bytes:
        return packb(self.target)

    @classmethod
    def decode(cls, payload) -> PunchReq:
        if not is_node_id(payload):
            raise WireError("malformed")
        return cls(payload)


@dataclass(frozen=True)
class Punch:
    """An introduction: send to this peer now, at the address its introducer sees it at."""
    TYPE: ClassVar = MessageType.PUNCH
    peer: bytes
    addr: tuple
    nat: int             # the peer's NatKind

    def encode(self) -> bytes:
        return packb([self.peer, list(self.addr), int(self.nat)])

    @classmethod
    def decode(cls, payload) -> Punch:
        if not (isinstance(payload, list) and len(payload) == 3 and is_node_id(payload[0])
                and is_uint(payload[2], len(NatKind))):
            raise WireError("malformed")
        addr = decode_addr(payload[1])
        if addr is None:
            raise WireError("malformed")
        return cls(payload[0], addr, payload[2])


Message = (Hello | Ping | Ack | PingReq | Push | Digest | Vector | Pull | Records | PeersReq | Peers
           | Relay | PunchReq | Punch)
MESSAGES = (Hello, Ping, Ack, PingReq, Push, Digest, Vector, Pull, Records, PeersReq, Peers, Relay,
            PunchReq, Punch)
DECODERS = {cls.TYPE: cls.decode for cls in MESSAGES}


def decode(mtype: int, payload) -> Message:
    """The typed message of an authenticated datagram's payload; raises WireError("malformed")."""
    return DECODERS[mtype](payload)
