"""Records: signed runs of consecutive updates of one origin, and the per-origin book.

    signed message = b"onebyte-rec-v1" | swarm_id | origin(16) | first_step(u64le) | qs
    canonical form = the wire form with the origin's public key included

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

from .wire import encode_record

RECENT_PER_ORIGIN = 64  # record fingerprints kept per origin for duplicate/equivocation checks


def record_message(swarm_id: bytes, origin: bytes, first_step: int, qs: bytes) -> bytes:
    return b"onebyte-rec-v1" + swarm_id + origin + first_step.to_bytes(8, "little") + qs


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
    sig: bytes

    @property
    def last_step(self) -> int:
        return self.first_step + len(self.qs) - 1

    def canonical(self) -> bytes:
        canon = self.__dict__.get("_canonical")
        if canon is None:
            canon = self.__dict__["_canonical"] = encode_record(self.pub, self.first_step, self.qs,
                                                                self.sig)
        return canon

    def fingerprint(self) -> bytes:
        fp = self.__dict__.get("_fingerprint")
        if fp is None:
            fp = self.__dict__["_fingerprint"] = hashlib.blake2b(self.qs + self.sig,
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
                 "pull_bucket", "equivocating")

    def __init__(self, contiguous: int = 0):
        self.contiguous = contiguous
        self.pending: dict[int, Record] = {}      # first_step -> verified record beyond a gap
        self.pending_updates = 0
        self.recent: dict[int, tuple] = {}         # first_step -> (last_step, fingerprint, canonical)
        self.recent_order: deque = deque()
        self.bucket: TokenBucket | None = None        # pushed updates
        self.pull_bucket: TokenBucket | None = None   # updates we pulled
        self.equivocating = False


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
