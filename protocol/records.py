"""Records: signed runs of consecutive updates of one origin, and the per-origin book.

    signed message = b"onebyte-rec-v1" | swarm_id | origin(16) | first_step(u64le) | qs
    canonical form = the wire form with the origin's public key included

Batches (genesis `records_per_signature` k > 1, docs/protocol.md "Batch signatures"): an
origin signs only the last record of each batch of up to k consecutive records, the
*closer*; the closer's signature also covers the member hashes of the batch's other
records, the *members*, which travel unsigned:

    member hash    = blake2b-128(b"onebyte-mem-v1" | swarm_id | origin | first_step | qs)
    closer message = b"onebyte-bat-v1" | swarm_id | origin | first_step | n(u16le)
                     | n member hashes | qs                   (n = 0: the record message)

So a closer verifies on its own and a member verifies by its hash alone, in any order,
from any relay; a member whose closer is not yet known waits (bounded) as a candidate.

The book decides, before any signature check, whether a record is a
duplicate, deliverable, to be held (out of order) or conflicting; the engine
verifies the signature only for records that would change state.
"""
from __future__ import annotations

import hashlib
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum

from .identity import SIG_SIZE
from .wire import (REC_HAS_KEY, MAX_STEP, WireError, _read_leb128, decode_record, encode_record, leb128,
                   pack_qs, unpack_qs)

RECENT_PER_ORIGIN = 64  # record fingerprints kept per origin for duplicate/equivocation checks
REC_MEMBER = 0x02       # record flag: a batch member, no signature
REC_HASHES = 0x04       # record flag: a closer, member hashes before the body
# A member hash needs second-preimage resistance only (nobody but the origin can make a
# member match its closer: 128 bits); two members of one hash that the origin crafted would
# both verify, and are then two signed q for one step: an equivocation proof like any other.
HASH_SIZE = 16
HALF_BUNDLE = 0x80      # first byte of a proof half that is a member plus its closer
CANDIDATES_PER_ORIGIN_MULT = 4   # candidates held per origin: this times records_per_signature


def record_message(swarm_id: bytes, origin: bytes, first_step: int, qs: bytes) -> bytes:
    return b"onebyte-rec-v1" + swarm_id + origin + first_step.to_bytes(8, "little") + qs


def batch_message(swarm_id: bytes, origin: bytes, first_step: int, qs: bytes, hashes: tuple) -> bytes:
    """What a closer's signature covers; without member hashes, exactly record_message."""
    if not hashes:
        return record_message(swarm_id, origin, first_step, qs)
    return (b"onebyte-bat-v1" + swarm_id + origin + first_step.to_bytes(8, "little")
            + len(hashes).to_bytes(2, "little") + b"".join(hashes) + qs)


def member_hash(swarm_id: bytes, origin: bytes, first_step: int, qs: bytes) -> bytes:
    return hashlib.blake2b(b"onebyte-mem-v1" + swarm_id + origin + first_step.to_bytes(8, "little") + qs,
                           digest_size=HASH_SIZE).digest()


def encode_any(pub: bytes | None, first_step: int, qs: bytes, sig: bytes | None, hashes: tuple = ()) -> bytes:
    """A record's wire form: signed (today's form), a closer (REC_HASHES) or a member (REC_MEMBER)."""
    if sig is not None and not hashes:
        return encode_record(pub, first_step, qs, sig)
    w, body = pack_qs(qs)
    flags = (w << 4) | (REC_HAS_KEY if pub is not None else 0)
    if sig is None:
        return bytes([flags | REC_MEMBER]) + (pub or b"") + leb128(first_step) + body
    return (bytes([flags | REC_HASHES]) + (pub or b"") + leb128(first_step) + leb128(len(hashes))
            + b"".join(hashes) + body + sig)


def decode_any(rec: bytes) -> tuple:
    """(pub or None, first_step, qs, sig or None, member hashes).  Raises WireError('malformed')."""
    if not isinstance(rec, bytes) or len(rec) < 3:
        raise WireError("malformed")
    flags = rec[0]
    kind = flags & (REC_MEMBER | REC_HASHES)
    if not kind:
        return (*decode_record(rec), ())
    w = flags >> 4
    if flags & 0x08 or w > 7 or kind == REC_MEMBER | REC_HASHES:
        raise WireError("malformed")
    pos = 1
    pub = None
    if flags & REC_HAS_KEY:
        pub, pos = rec[1:33], 33
    step, pos = _read_leb128(rec, pos)
    hashes, end = (), len(rec)
    if kind == REC_HASHES:
        n, pos = _read_leb128(rec, pos)
        end -= SIG_SIZE
        if n < 1 or pos + n * HASH_SIZE > end:
            raise WireError("malformed")
        hashes = tuple(rec[pos + i * HASH_SIZE:pos + (i + 1) * HASH_SIZE] for i in range(n))
        pos += n * HASH_SIZE
    body = rec[pos:end]
    if step < 1 or step >= MAX_STEP or len(body) < 1 or (pub is not None and len(pub) != 32):
        raise WireError("malformed")
    qs = unpack_qs(w, body) if w else body
    return pub, step, qs, (rec[end:] if kind == REC_HASHES else None), hashes


def qs_to_bytes(qs) -> bytes:
    return struct.pack(f"{len(qs)}b", *qs)


def bytes_to_qs(raw: bytes) -> tuple:
    return struct.unpack(f"{len(raw)}b", raw)


@dataclass
class Record:
    pub: bytes
    origin: bytes
    first_step: int
    qs: bytes
    sig: bytes | None          # None: a batch member (its closer's signature covers its hash)
    hashes: tuple = ()         # a closer: the member hashes its signature covers

    @property
    def last_step(self) -> int:
        return self.first_step + len(self.qs) - 1

    def canonical(self) -> bytes:
        canon = self.__dict__.get("_canonical")
        if canon is None:
            canon = self.__dict__["_canonical"] = encode_any(self.pub, self.first_step, self.qs,
                                                             self.sig, self.hashes)
        return canon

    def fingerprint(self) -> bytes:
        fp = self.__dict__.get("_fingerprint")
        if fp is None:
            fp = self.__dict__["_fingerprint"] = hashlib.blake2b(self.qs + (self.sig or b""),
                                                                 digest_size=8).digest()
        return fp


class TokenBucket:
    __slots__ = ("rate", "depth", "tokens", "stamp")

    def __init__(self, rate: float, depth: float, now: float):
        self.rate, self.depth, self.tokens, self.stamp = rate, depth, depth, now

    def take(self, n: float, now: float) -> bool:
        if now > self.stamp:
            self.tokens = min(self.depth, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class OriginState:
    __slots__ = ("contiguous", "pending", "pending_updates", "recent", "recent_order", "bucket",
                 "pull_bucket", "equivocating", "commits", "candidates")

    def __init__(self, contiguous: int = 0):
        self.contiguous = contiguous
        self.pending: dict[int, Record] = {}      # first_step -> verified record beyond a gap
        self.pending_updates = 0
        self.recent: dict[int, tuple] = {}         # first_step -> (last_step, fingerprint, canonical)
        self.recent_order: deque = deque()
        self.bucket: TokenBucket | None = None        # pushed updates
        self.pull_bucket: TokenBucket | None = None   # updates we pulled
        self.equivocating = False
        self.commits: dict[bytes, Record] = {}     # member hash -> the verified closer vouching for it
        self.candidates: dict[bytes, Record] = {}  # member hash -> member whose closer is unknown


class Classified(IntEnum):
    """What a received record is, relative to what an origin's book already holds."""
    DUP = 0        # already held (or older than the contiguous step)
    NEW = 1        # not held: deliver or buffer it
    CONFLICT = 2   # the same steps, other content, both signed: equivocation


class RecordBook:
    """Per-origin delivery state: contiguous step, out-of-order buffer, recent records."""

    def __init__(self, max_pending_per_origin: int, max_pending_total: int):
        self.origins: dict[bytes, OriginState] = {}
        self.max_pending_per_origin = max_pending_per_origin
        self.max_pending_total = max_pending_total
        self.pending_total = 0

    def state(self, origin: bytes) -> OriginState:
        st = self.origins.get(origin)
        if st is None:
            st = self.origins[origin] = OriginState()
        return st

    def contiguous(self, origin: bytes) -> int:
        st = self.origins.get(origin)
        return st.contiguous if st else 0

    def classify(self, rec: Record) -> tuple[Classified, bytes | None]:
        """(what rec is, the conflicting canonical record if CONFLICT).  No state change."""
        st = self.origins.get(rec.origin)
        if st is None:
            return Classified.NEW, None
        held = st.recent.get(rec.first_step)
        if held is None:
            p = st.pending.get(rec.first_step)
            if p is not None:
                held = (p.last_step, p.fingerprint(), p.canonical())
        if held is not None:
            if held[0] == rec.last_step and held[1] == rec.fingerprint():
                return Classified.DUP, None
            return Classified.CONFLICT, held[2]
        if rec.last_step <= st.contiguous:
            # Old and not in the recent window: a duplicate as far as we can cheaply tell
            # (equivocation is only checked against the last RECENT_PER_ORIGIN records).
            return Classified.DUP, None
        return Classified.NEW, None

    def remember(self, st: OriginState, rec: Record) -> None:
        if rec.first_step in st.recent:
            return
        st.recent[rec.first_step] = (rec.last_step, rec.fingerprint(), rec.canonical())
        st.recent_order.append(rec.first_step)
        if len(st.recent_order) > RECENT_PER_ORIGIN:
            st.recent.pop(st.recent_order.popleft(), None)

    def can_hold(self, st: OriginState, rec: Record) -> bool:
        n = len(rec.qs)
        return (st.pending_updates + n <= self.max_pending_per_origin
                and self.pending_total < self.max_pending_total
                and rec.first_step - st.contiguous <= self.max_pending_per_origin)

    def hold(self, st: OriginState, rec: Record) -> None:
        st.pending[rec.first_step] = rec
        st.pending_updates += len(rec.qs)
        self.pending_total += 1

    def drop_pending(self, st: OriginState) -> None:
        """Forget every held record of an origin (one the influence budget excluded)."""
        self.pending_total -= len(st.pending)
        st.pending.clear()
        st.pending_updates = 0
        st.commits.clear()
        st.candidates.clear()

    def hold_candidate(self, st: OriginState, h: bytes, rec: Record, limit: int) -> bool:
        """Keep a member until its closer comes (oldest out past limit: a forged member only
        costs room, and anti-entropy brings back a real one it pushed out)."""
        if rec.first_step - st.contiguous > self.max_pending_per_origin:
            return False
        st.candidates.pop(h, None)
        st.candidates[h] = rec
        while len(st.candidates) > limit:
            st.candidates.pop(next(iter(st.candidates)))
        return True

    def prune_batches(self, st: OriginState) -> None:
        """Forget the commitments of delivered closers (their members are all delivered).
        Candidates go only by the FIFO bound: one at or below the contiguous step is held
        only when it conflicts with a held step (possible equivocation evidence)."""
        top = st.contiguous
        if st.commits:
            st.commits = {h: c for h, c in st.commits.items() if c.first_step > top + 1}

    def pop_next(self, st: OriginState):
        """Pop a held record that now touches the contiguous mark (None if none)."""
        while st.pending:
            nxt = None
            for first in st.pending:
                if first <= st.contiguous + 1:
                    nxt = first
                    break
            if nxt is None:
                return None
            rec = st.pending.pop(nxt)
            st.pending_updates -= len(rec.qs)
            self.pending_total -= 1
            if rec.last_step > st.contiguous:
                return rec
        return None
