"""Eager push queue (memberlist's TransmitLimitedQueue) and version-vector digests.

Push gives speed: a fresh record or membership change is piggybacked on the
next few push rounds until it has been sent `limit` times, with
limit = retransmit_mult * ceil(log10(n + 1)).  Pull gives the guarantee: every
anti-entropy round compares bucketed hashes of the version vector with one
random peer and pulls whatever is missing.
"""
from __future__ import annotations

import hashlib
from collections import deque

from .wire import packed_alive_forms

# Certificates a peer is known to hold, kept per peer (Member.known): bounded, oldest out.
KNOWN_PER_PEER = 1024


def note_held(peer, node_id: bytes, tag: bytes) -> None:
    """peer (a Member) holds node_id's certificate as alive_tag `tag` (protocol/wire.py)."""
    known = peer.known
    known.pop(node_id, None)
    known[node_id] = tag
    if len(known) > KNOWN_PER_PEER:
        del known[next(iter(known))]


class TransmitLimitedQueue:
    """Items (already packed) sent fewest-transmits-first, newest first among equals.

    `key` lets a newer item invalidate an older one about the same subject
    (e.g. a DEAD message replaces the SUSPECT about that node).
    """

    def __init__(self, max_items: int, newest_first: bool = True):
        self.max_items = max_items
        self.newest_first = newest_first   # records go oldest first: receivers then see steps in order
        self._by_count: dict[int, dict] = {}   # transmits -> {key: packed}, insertion ordered
        self._where: dict = {}                 # key -> transmits
        # key -> alive_tag of an ALIVE item: a peer whose `known` holds it is skipped (the
        # transmit counts, no bytes go); the others get its TAG form (key -> _short), and ask
        # the sender for the certificate only if they lack it (inv/getdata: a certificate
        # crosses each link about once, where relaying it whole sent it ~limit times per node).
        self._tags: dict = {}
        self._short: dict = {}
        # Transmits of a relayed ALIVE (TAG) item, when lower than the queue's limit: where
        # every member reaches every other itself, relays are a backup (Sync.everyone_talks).
        self.tag_limit: int | None = None
        self._own = None
        self.pruned = 0                        # items dropped by _prune (diagnostics)
        self.pruned_by_count: dict = {}        # transmits they had when dropped

    def __len__(self) -> int:
        return len(self._where)

    def urgent(self) -> bool:
        """Anything queued besides relayed ALIVE news (those go as TAGs): a suspicion, a
        death, a leave, a proof, a refutation by its subject."""
        return len(self._where) > len(self._short)

    def push(self, key, packed: bytes, whole: bool = False, own: bool = False) -> None:
        """whole: an ALIVE item that goes whole, never as a TAG (a refutation by its subject);
        own: our own announcement (its TAG carries our version: never cut to tag_limit)."""
        old = self._where.pop(key, None)
        if old is not None:
            self._drop_from(old, key)
        self._by_count.setdefault(0, {})[key] = packed
        self._where[key] = 0
        forms = packed_alive_forms(packed, key) if isinstance(key, bytes) else None
        if forms is not None:
            self._tags[key], short = forms
            if not whole:
                self._short[key] = short
            if own:
                self._own = key
        if len(self._where) > self.max_items:
            self._prune()

    def _prune(self) -> None:
        # Drop the most-transmitted items first: they have done most of their work.
        for count in sorted(self._by_count, reverse=True):
            bucket = self._by_count[count]
            while bucket and len(self._where) > self.max_items:
                key = next(iter(bucket))
                del bucket[key]
                del self._where[key]
                self._forget(key)
                self.pruned += 1
                self.pruned_by_count[count] = self.pruned_by_count.get(count, 0) + 1
            if not bucket:
                del self._by_count[count]
            if len(self._where) <= self.max_items:
                return

    def _held(self, key, to) -> bool:
        """The peer `to` (a Member) holds this ALIVE item's news already: it is the subject,
        or its `known` has the item's tag (see _tags)."""
        if to is None or key not in self._tags:
            return False
        return key == to.node_id or to.known.get(key) == self._tags[key]

    def _forget(self, key) -> None:
        self._tags.pop(key, None)
        self._short.pop(key, None)

    def take(self, budget: int, limit: int, overhead: int = 0, sent: set | None = None,
             to=None) -> list:
        """Items fitting in budget bytes (each costs len + overhead); counts one transmit each.

        `sent` (keys already given to this peer this round) is skipped and extended, so one
        peer never gets the same item twice in a round; `known` (the peer's Member.known) skips
        the ALIVE items that peer (a Member) holds.  Stops after a few items that do not
        fit, so a long queue costs O(taken), not O(queue).
        """
        out, moved, misses = [], [], 0
        for count in sorted(self._by_count):
            bucket = self._by_count[count]
            for key in (reversed(bucket) if self.newest_first else iter(bucket)):
                if sent is not None and key in sent:
                    continue
                packed = bucket[key]
                if self._held(key, to):
                    moved.append((key, count, packed))   # held already: counts, costs nothing
                    continue
                wire = self._short.get(key, packed)
                cost = len(wire) + overhead
                if cost > budget:
                    misses += 1
                    if misses >= 4:
                        break
                    continue
                budget -= cost
                out.append(wire)
                moved.append((key, count, packed))
            if misses >= 4 or budget <= overhead:
                break
        # Re-insert in original age order, so "newest first" still holds among equals.
        self._advance(moved, limit, sent)
        return out

    def take_into(self, rooms: list, limit: int, to=None) -> list:
        """Fill several datagrams for one peer in one pass: rooms[i] is datagram i's free bytes
        (updated in place); returns the items per datagram.  An item goes into the current
        datagram if it fits, else the next; each item is taken at most once per call."""
        out = [[] for _ in rooms]
        moved, cur, n = [], 0, len(rooms)
        for count in sorted(self._by_count):
            bucket = self._by_count[count]
            for key in (reversed(bucket) if self.newest_first else iter(bucket)):
                packed = bucket[key]
                if self._held(key, to):
                    moved.append((key, count, packed))   # held already: counts, costs nothing
                    continue
                wire = self._short.get(key, packed)
                size = len(wire)
                while cur < n and size > rooms[cur]:
                    cur += 1
                if cur >= n:
                    break
                rooms[cur] -= size
                out[cur].append(wire)
                moved.append((key, count, packed))
            if cur >= n:
                break
        self._advance(moved, limit, None)
        return out

    def _advance(self, moved: list, limit: int, sent) -> None:
        by_count, where = self._by_count, self._where
        tag_limit = min(limit, self.tag_limit) if self.tag_limit else limit
        for key, count, packed in (reversed(moved) if self.newest_first else moved):
            if sent is not None:
                sent.add(key)
            bucket = by_count[count]
            del bucket[key]
            if not bucket:
                del by_count[count]
            if count + 1 >= (tag_limit if key in self._short and key != self._own else limit):
                del where[key]
                self._forget(key)
            else:
                nxt = by_count.get(count + 1)
                if nxt is None:
                    nxt = by_count[count + 1] = {}
                nxt[key] = packed
                where[key] = count + 1

    def _drop_from(self, count: int, key) -> None:
        bucket = self._by_count.get(count)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del self._by_count[count]
        self._forget(key)


DIGEST_BUCKETS = 64
BUCKET_HASH = 4           # bytes per bucket hash: a chance equality of two differing buckets is
                          # 2^-32 per comparison, and only delays that repair to the next change
DIGEST_SIZE = DIGEST_BUCKETS * BUCKET_HASH   # bytes of a packed digest (the DIGEST payload)


def _entry_hash(origin: bytes, step: int) -> int:
    return int.from_bytes(hashlib.blake2b(origin + step.to_bytes(8, "little"),
                                          digest_size=BUCKET_HASH).digest(), "little")


def bucket_of(origin: bytes) -> int:
    return origin[0] % DIGEST_BUCKETS


class VersionDigest:
    """XOR of per-(origin, contiguous step) hashes in 64 buckets, updated incrementally."""

    def __init__(self) -> None:
        self.buckets = [0] * DIGEST_BUCKETS
        # dicts, not sets: iteration order must not depend on the per-process hash seed
        self.members: list[dict] = [{} for _ in range(DIGEST_BUCKETS)]
        self.recent: deque = deque(maxlen=4096)   # origins in order of their last advance

    def update(self, origin: bytes, old: int, new: int) -> None:
        b = bucket_of(origin)
        if old:
            self.buckets[b] ^= _entry_hash(origin, old)
        else:
            self.members[b][origin] = None
        self.buckets[b] ^= _entry_hash(origin, new)
        self.recent.append(origin)

    def recently_changed(self, buckets: set, limit: int) -> list:
        """Up to `limit` distinct origins in `buckets`, most recently advanced first."""
        out, seen = [], set()
        for origin in reversed(self.recent):
            if origin in seen:
                continue
            seen.add(origin)
            if origin[0] % DIGEST_BUCKETS in buckets:
                out.append(origin)
                if len(out) >= limit:
                    break
        return out

    def packed(self) -> bytes:
        return b"".join(h.to_bytes(BUCKET_HASH, "little") for h in self.buckets)

    def differing(self, other: bytes) -> list:
        """Bucket indices whose hash differs from a peer's packed digest."""
        out = []
        for i in range(DIGEST_BUCKETS):
            theirs = int.from_bytes(other[i * BUCKET_HASH:(i + 1) * BUCKET_HASH], "little")
            if theirs != self.buckets[i]:
                out.append(i)
        return out
