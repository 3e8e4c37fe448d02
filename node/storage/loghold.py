"""The update log's disk-full hold: entries that did not fit on the disk, in arrival order,
written by UpdateLog.retry() once space returns (node/storage/log.py, "Disk full").

Kept beside the hold, so that the log answers without scanning it: per origin the last
step of its held updates (new updates continue from there), and the keys of held records
(a record held is not added twice).
"""
from __future__ import annotations

from collections import deque

from .logfile import KIND_RECORD, KIND_UPDATES


class Hold:
    def __init__(self) -> None:
        self._items: deque = deque()      # (kind, origin, first, last, body) not yet written
        self._top: dict[bytes, int] = {}  # per origin: last step of its held updates
        self._records: set = set()        # (origin, first, last) of held records

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: tuple) -> None:
        self._items.append(item)
        kind, origin, first, last, _ = item
        if kind == KIND_UPDATES:
            self._top[origin] = last
        elif kind == KIND_RECORD:
            self._records.add((origin, first, last))

    def first(self) -> tuple:
        return self._items[0]

    def written(self) -> tuple:
        """The first entry landed on the disk: it leaves the hold."""
        item = self._items.popleft()
        kind, origin, first, last, _ = item
        if kind == KIND_UPDATES:
            if self._top.get(origin) == last:
                del self._top[origin]
        else:
            self._records.discard((origin, first, last))
        return item

    def top(self, origin: bytes) -> int:
        """The last step of origin's held updates (0: none held)."""
        return self._top.get(origin, 0)

    def has_record(self, origin: bytes, first: int, last: int) -> bool:
        return (origin, first, last) in self._records

    def drop_from(self, origin: bytes, step: int) -> None:
        """Without origin's updates from step on (an equivocation proof excludes them: they
        are never written)."""
        keep = deque()
        for kind, o, first, last, body in self._items:
            if kind == KIND_UPDATES and o == origin and last >= step:
                if first >= step:
                    continue
                body, last = body[:step - first], step - 1
            keep.append((kind, o, first, last, body))
        self._items = keep
        if origin in self._top:
            self._top[origin] = min(self._top[origin], step - 1)
