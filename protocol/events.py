"""Events the engine hands to its driver through Engine.next_event(), and their queue."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    pass


@dataclass(frozen=True)
class UpdatesReceived(Event):
    """Updates first_step .. first_step+len(qs)-1 of origin, each delivered exactly once.

    Per origin these arrive in contiguous step order; the record holding them is
    already in the RecordStore when this event is queued.
    """
    origin: bytes
    first_step: int
    qs: tuple  # ints in [-127, 127]

    @property
    def last_step(self) -> int:
        return self.first_step + len(self.qs) - 1

    def updates(self) -> list:
        return [(self.origin, self.first_step + i, q) for i, q in enumerate(self.qs)]


@dataclass(frozen=True)
class PeerJoined(Event):
    node_id: bytes
    addr: Any


@dataclass(frozen=True)
class PeerAlive(Event):
    """A suspected peer refuted the suspicion (or a dead one came back)."""
    node_id: bytes


@dataclass(frozen=True)
class PeerSuspected(Event):
    node_id: bytes


@dataclass(frozen=True)
class PeerDead(Event):
    node_id: bytes


@dataclass(frozen=True)
class PeerLeft(Event):
    node_id: bytes


@dataclass(frozen=True)
class DatagramDropped(Event):
    """Low-value: dropped first when the driver does not drain events."""
    reason: str
    addr: Any


@dataclass(frozen=True)
class EquivocationDetected(Event):
    """origin signed two different records for overlapping steps.

    record_a was accepted first (and stays); record_b is the conflicting one.
    Both are canonical signed records, so the pair is proof any node can verify.
    """
    origin: bytes
    first_step: int
    last_step: int
    record_a: bytes
    record_b: bytes


@dataclass(frozen=True)
class OwnHistoryLearned(Event):
    """The node knows its own earlier steps: peers reported where its origin stands and
    those records are delivered (an empty or old state dir with an old key), or nobody
    answered within the wait (a new key).  Produce only after this: next_step is the
    first step number never used.  Queued after the UpdatesReceived of the steps learned.
    """
    next_step: int
    answers: int          # peers that reported our origin's step (0: the wait timed out)


@dataclass(frozen=True)
class WeightsDiverged(Event):
    """A peer with the same version vector (same vv hash) reported other weights."""
    node_id: bytes
    ours: bytes
    theirs: bytes


@dataclass(frozen=True)
class OriginExcluded(Event):
    """origin broke its influence budget at step (protocol/influence.py), or a proof shows
    it signed two q for step (protocol/equivocation.py): steps before it are delivered,
    step and every later one never are, on every node.  A proof may come after steps >= step
    were delivered here: the driver takes those back (its log holds their q), and an event
    with a lower step may follow one with a higher step for the same origin."""
    origin: bytes
    step: int
    reason: str   # "abs_sum", "signed_sum" or "equivocation"


@dataclass(frozen=True)
class AmendmentApplied(Event):
    """A signed membership amendment took effect (protocol/amendments.py), in number order:
    kind 0 admit key, 1 revoke key from step, 2 rotate key to new_key from step. A revoke or
    rotate is also an OriginExcluded (reason "revoked" or "rotated")."""
    number: int
    kind: int
    key: bytes
    step: int
    new_key: bytes


DROP_REASONS = (
    "truncated", "oversize", "wrong_version", "wrong_swarm", "unknown_type", "malformed",
    "bad_signature", "bad_mac", "unknown_sender", "replayed", "rate_limited", "not_admitted",
    "from_self", "stale_generation", "buffer_full", "backpressure", "excluded", "no_path",
)


class EventQueue:
    """Events in the order they happened, in two classes.

    High-value events (updates, membership, equivocation) queue without loss; once
    max_events of them wait, the engine takes no more records (`full`: back-pressure).
    DatagramDropped events keep only the newest max_drop_events; the counters still
    count every drop.
    """

    def __init__(self, max_events: int, max_drop_events: int):
        self.high: deque = deque()   # (seq, event)
        self.low: deque = deque()    # (seq, DatagramDropped)
        self.max_events = max_events
        self.max_drop_events = max_drop_events
        # drops by reason, and drop events discarded unread (the newest max_drop_events stay)
        self.counters: dict = {"drops": {}, "events_dropped": 0}
        self._seq = 0

    @property
    def full(self) -> bool:
        return len(self.high) >= self.max_events

    def emit(self, event: Event) -> None:
        self._seq += 1
        if isinstance(event, DatagramDropped):
            if len(self.low) >= self.max_drop_events:
                self.low.popleft()
                self.counters["events_dropped"] += 1
            self.low.append((self._seq, event))
        else:
            self.high.append((self._seq, event))

    def drop(self, reason: str, addr) -> None:
        """Count a dropped datagram (or item of one) and report it."""
        drops = self.counters["drops"]
        drops[reason] = drops.get(reason, 0) + 1
        self.emit(DatagramDropped(reason, addr))

    def pop(self) -> Event | None:
        high, low = self.high, self.low
        if high and (not low or high[0][0] < low[0][0]):
            return high.popleft()[1]
        if low:
            return low.popleft()[1]
        return None
