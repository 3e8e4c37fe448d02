"""The update log's equivocation exclusions (logfile.py KIND_PROOF, its body codec there;
protocol/equivocation.py): what an exclusion does to the in-memory index and the disk-full hold."""
from __future__ import annotations

from collections import deque

from .logfile import KIND_UPDATES


def index_proof(o, step: int, a: bytes, b: bytes, taken: bytes) -> bool:
    """Origin o (log._Origin) is excluded from step on: its updates from there leave the index
    (their q are kept in the proof, to take them out of a snapshot that holds them), and so
    do its records that start there.  A lower step replaces a higher one."""
    if o.proof is not None and o.proof[0] <= step:
        return False
    del o.qs[max(0, step - o.base - 1):]
    o.records = [r for r in o.records if r[0] < step]
    o.record_keys = {(f, last) for f, last, _ in o.records}
    o.proof = (step, a, b, bytes(taken))
    return True


def drop_held(held: deque, held_top: dict, origin: bytes, step: int) -> deque:
    """The disk-full hold without origin's updates from step on (they are never written)."""
    keep = deque()
    for kind, o, first, last, body in held:
        if kind == KIND_UPDATES and o == origin and last >= step:
            if first >= step:
                continue
            body, last = body[:step - first], step - 1
        keep.append((kind, o, first, last, body))
    if origin in held_top:
        held_top[origin] = min(held_top[origin], step - 1)
    return keep
