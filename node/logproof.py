"""The update log's equivocation exclusions (logfile.py KIND_PROOF, its body codec there;
protocol/equivocation.py): what an exclusion does to the in-memory index (and to the
disk-full hold: loghold.Hold.drop_from)."""
from __future__ import annotations


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
