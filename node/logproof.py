"""The update log's equivocation exclusions (log.py KIND_PROOF; protocol/equivocation.py):
the entry body, and what an exclusion does to the in-memory index and the disk-full hold."""
from __future__ import annotations

import struct
from collections import deque


def proof_body(a: bytes, b: bytes, taken: bytes) -> bytes:
    return struct.pack("<H", len(a)) + a + struct.pack("<H", len(b)) + b + taken


def parse_proof_body(body: bytes) -> tuple[bytes, bytes, bytes]:
    (na,) = struct.unpack_from("<H", body)
    a = body[2:2 + na]
    (nb,) = struct.unpack_from("<H", body, 2 + na)
    return a, body[4 + na:4 + na + nb], body[4 + na + nb:]


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
    from .log import KIND_UPDATES
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
