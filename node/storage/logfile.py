"""The update log's file format (node/storage/log.py describes it): the header, entry framing and
kinds, recognising a torn tail, reading the whole file, and writing a compacted log."""

from __future__ import annotations

import errno
import os
import struct
import zlib

from ..errors import DiskFull
from .durable import fsync_path, write_all

MAGIC = b"onebyte-log\0"
VERSION = 1
HEADER = MAGIC + struct.pack("<I", VERSION)
FRAME = struct.Struct("<II")           # payload length, crc32(payload)
PREFIX = struct.Struct("<B16sQQ")      # kind, origin, first_step, last_step
KIND_UPDATES = 1
KIND_RECORD = 2
KIND_BASE = 3
KIND_PROOF = 4
KIND_AMEND = 5
ENTRY_KINDS = (KIND_UPDATES, KIND_RECORD, KIND_BASE, KIND_PROOF, KIND_AMEND)
NO_ORIGIN = bytes(16)                  # the origin field of entries that belong to no origin
MAX_PAYLOAD = 1 << 24                  # no sane entry is larger; a larger length is corruption
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def proof_body(a: bytes, b: bytes, taken: bytes) -> bytes:
    return struct.pack("<H", len(a)) + a + struct.pack("<H", len(b)) + b + taken


def parse_proof_body(body: bytes) -> tuple[bytes, bytes, bytes]:
    (na,) = struct.unpack_from("<H", body)
    a = body[2:2 + na]
    (nb,) = struct.unpack_from("<H", body, 2 + na)
    return a, body[4 + na:4 + na + nb], body[4 + na + nb:]


def encode_entry(kind: int, origin: bytes, first: int, last: int, body: bytes) -> bytes:
    payload = PREFIX.pack(kind, origin, first, last) + body
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload

UPDATES_CHUNK = 1 << 20   # q bytes per UPDATES entry written by write_log


def is_tail(data: bytes, off: int) -> bool:
    """A checksum or length failure is a torn tail only if nothing valid follows it.

    We cannot know the true extent of the broken entry, so look for any later offset
    where a whole valid entry starts; if there is one, the damage is in the middle."""
    n = len(data)
    for start in range(off + 1, n - FRAME.size - PREFIX.size + 1):
        length, crc = FRAME.unpack_from(data, start)
        end = start + FRAME.size + length
        if PREFIX.size <= length <= MAX_PAYLOAD and end <= n:
            payload = data[start + FRAME.size:end]
            if payload[0] in ENTRY_KINDS and zlib.crc32(payload) == crc:
                return False
    return True


def read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def write_log(path, origins: dict, amendments: dict | None = None) -> tuple[int, int, int]:
    """Write a whole log for the index `origins` ({origin: _Origin}) and the membership
    `amendments` ({number: packed amendment}, kept whole) to a temp file beside
    `path`, fsync it and rename it over `path`: a crash leaves the old or the new log, whole.
    Returns (an O_APPEND fd of the new file, its size, its entry count); DiskFull if it
    does not fit (the temp file is removed and the old log stays)."""
    entries = [HEADER]
    for number, packed in sorted((amendments or {}).items()):
        entries.append(encode_entry(KIND_AMEND, NO_ORIGIN, number, number, packed))
    for origin in sorted(origins):
        o = origins[origin]
        if o.base:
            entries.append(encode_entry(KIND_BASE, origin, o.base, o.base, b""))
        for i in range(0, len(o.qs), UPDATES_CHUNK):
            body = bytes(o.qs[i:i + UPDATES_CHUNK])
            first = o.base + i + 1
            entries.append(encode_entry(KIND_UPDATES, origin, first, first + len(body) - 1, body))
        for first, last, rec in o.records:
            entries.append(encode_entry(KIND_RECORD, origin, first, last, rec))
        if o.proof is not None:   # an equivocation exclusion (log.py KIND_PROOF) outlives compaction
            step, a, b, taken = o.proof
            entries.append(encode_entry(KIND_PROOF, origin, step, step + len(taken) - 1,
                                        proof_body(a, b, taken)))
    tmp = path.with_name(f".{path.name}.compact-{os.getpid()}")
    fd = None
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        for e in entries:
            write_all(fd, e)
        os.fsync(fd)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            raise DiskFull(f"no space left to compact {path}") from None
        raise
    return fd, sum(len(e) for e in entries), len(entries) - 1
