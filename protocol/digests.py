"""The digest forms of anti-entropy's DIGEST message (messages.Digest, docs/protocol.md).

`hashes` is our version-vector digest (dissemination.VersionDigest, 64 bucket hashes) in
one of three forms: all of it, SPARSE (a bitmap of the non-empty buckets and their hashes,
shorter in a swarm of few origins), or ROOT (one short hash of the whole, what a quiet
round sends). `weights` is (weights digest, vv hash), for the divergence check.
Pure functions: Sync decides when to send which.
"""
from __future__ import annotations

import hashlib

from .dissemination import BUCKET_HASH, DIGEST_SIZE
from .wire import WireError

ASK_OWN = 0x01           # flag: "list my own origin's step in your VECTOR, even if equal"
SPARSE = 0x02            # flag: hashes are a bitmap of non-empty buckets + their hashes
ROOT = 0x04              # flag: hashes are one hash of the whole digest (sent while quiet)
ROOT_SIZE = 8
MAX_WEIGHTS_FIELD = 32   # bytes of a weights digest or vv hash carried in a DIGEST
_BUCKETS = DIGEST_SIZE // BUCKET_HASH


def root_of(packed: bytes) -> bytes:
    """One short hash of a whole packed digest: what an idle round sends."""
    return hashlib.blake2b(b"onebyte-vv-root-v1" + packed, digest_size=ROOT_SIZE).digest()


def sparse(packed: bytes) -> bytes:
    """bitmap u64le of the non-empty buckets, then their hashes in bucket order."""
    bitmap, parts = 0, []
    for i in range(_BUCKETS):
        h = packed[i * BUCKET_HASH:(i + 1) * BUCKET_HASH]
        if any(h):
            bitmap |= 1 << i
            parts.append(h)
    return bitmap.to_bytes(8, "little") + b"".join(parts)


def unsparse(data: bytes) -> bytes:
    if len(data) < 8:
        raise WireError("malformed")
    bitmap = int.from_bytes(data[:8], "little")
    if len(data) != 8 + BUCKET_HASH * bitmap.bit_count():
        raise WireError("malformed")
    out, pos = [], 8
    for i in range(_BUCKETS):
        if bitmap >> i & 1:
            out.append(data[pos:pos + BUCKET_HASH])
            pos += BUCKET_HASH
        else:
            out.append(bytes(BUCKET_HASH))
    return b"".join(out)
