"""RecordStore: where accepted records live so they can be served to peers.

The node backs it with its durable log; MemoryRecordStore is the in-memory
version used by tests and the simulator.  The engine only calls add() for
records it delivers in step order, so a store never has gaps per origin; with
a peer's record it passes the steps it delivers of it (delivered = (first, qs)),
so a durable store logs the record and its updates in one call: the node's log
has one writer for the steps it receives (node/storage/log.py).
"""
from __future__ import annotations

import bisect
from typing import Protocol


class RecordStore(Protocol):
    def add(self, origin: bytes, first_step: int, last_step: int, record: bytes,
            delivered: tuple | None = None) -> None: ...
    def get(self, origin: bytes, from_step: int, limit_bytes: int) -> list: ...
    def version_vector(self) -> dict: ...
    # Optional: stores that keep equivocation proofs (protocol/equivocation.py) across restarts.
    # def add_proof(self, origin, step, record_a, record_b) -> None: ...
    # def proofs(self) -> dict: {origin: (record_a, record_b)}
    # Optional: stores that keep exclusions by rules the shell evaluates (Engine.exclude).
    # def add_exclusion(self, origin, step, reason) -> None: ...
    # def rule_exclusions(self) -> dict: {origin: (step, reason)}
    # Optional: stores that keep membership amendments (protocol/amendments.py) across restarts.
    # def add_amendment(self, number, packed) -> None: ...
    # def amendments(self) -> list: [packed AMEND item, ...]


class MemoryRecordStore:
    """Per origin: records sorted by first step; version vector = last contiguous step."""

    def __init__(self) -> None:
        self._firsts: dict[bytes, list[int]] = {}
        self._records: dict[bytes, list[tuple[int, int, bytes]]] = {}
        self._vv: dict[bytes, int] = {}
        self._proofs: dict[bytes, tuple[int, bytes, bytes]] = {}
        self._rules: dict[bytes, tuple[int, str]] = {}
        self._amendments: dict[int, bytes] = {}

    def add(self, origin: bytes, first_step: int, last_step: int, record: bytes,
            delivered: tuple | None = None) -> None:
        """Hold the record (the delivered steps are the driver's: only records are served)."""
        if last_step < first_step:
            raise ValueError("last_step < first_step")
        firsts = self._firsts.setdefault(origin, [])
        recs = self._records.setdefault(origin, [])
        i = bisect.bisect_left(firsts, first_step)
        if i < len(firsts) and firsts[i] == first_step:
            return  # already held
        firsts.insert(i, first_step)
        recs.insert(i, (first_step, last_step, record))
        top = self._vv.get(origin, 0)
        # Advance the contiguous mark over every record that now touches it.
        j = bisect.bisect_right(firsts, top + 1) - 1
        while 0 <= j < len(recs) and recs[j][0] <= top + 1:
            top = max(top, recs[j][1])
            j += 1
        self._vv[origin] = top

    def get(self, origin: bytes, from_step: int, limit_bytes: int) -> list:
        """Records (in step order) covering from_step onwards, up to limit_bytes (at least one)."""
        firsts = self._firsts.get(origin)
        if not firsts:
            return []
        recs = self._records[origin]
        i = max(0, bisect.bisect_right(firsts, from_step) - 1)
        if recs[i][1] < from_step:
            i += 1
        out, used = [], 0
        while i < len(recs):
            rec = recs[i][2]
            if out and used + len(rec) > limit_bytes:
                break
            out.append(rec)
            used += len(rec)
            i += 1
        return out

    def version_vector(self) -> dict:
        """Capped below an origin's proof step: steps from it on are kept as evidence only."""
        vv = dict(self._vv)
        cuts = [(o, step) for o, (step, _, _) in self._proofs.items()] + [(o, s) for o, (s, _) in self._rules.items()]
        for origin, step in cuts:
            if origin in vv:
                vv[origin] = min(vv[origin], step - 1)
        return vv

    def add_proof(self, origin: bytes, step: int, record_a: bytes, record_b: bytes) -> None:
        if origin not in self._proofs or step < self._proofs[origin][0]:
            self._proofs[origin] = (step, record_a, record_b)

    def proofs(self) -> dict:
        return {o: (a, b) for o, (_, a, b) in self._proofs.items()}

    def add_exclusion(self, origin: bytes, step: int, reason: str) -> None:
        if origin not in self._rules or step < self._rules[origin][0]:
            self._rules[origin] = (step, reason)

    def rule_exclusions(self) -> dict:
        return dict(self._rules)

    def add_amendment(self, number: int, packed: bytes) -> None:
        self._amendments[number] = packed   # the engine stores the one it keeps for a number

    def amendments(self) -> list:
        return [self._amendments[n] for n in sorted(self._amendments)]

    def __len__(self) -> int:
        return sum(len(r) for r in self._records.values())
