"""The snapshot TCP wire, both ends (node/join/snapshot_service.py serves, node/join/snapshot_join.py and
node/storage/compaction.py ask): one request per connection, one JSON line each way, then for `get`
the raw bytes; version vectors as {origin hex: n}; files named by their SHA-256."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

MAX_LINE = 1 << 20       # the longest JSON line either end reads
CHUNK = 1 << 20          # bytes per read when hashing or serving a file
TIMEOUT_S = 30.0         # a peer's answer line (and each read of a `get`'s bytes)


def line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def parse_line(raw: bytes) -> dict:
    """One JSON object line; ValueError for anything else (an empty one: the peer closed)."""
    if not raw:
        raise ValueError("connection closed")
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


async def request(addr, swarm_hex: str, req: dict, timeout: float) -> tuple[dict, asyncio.StreamReader,
                                                                             asyncio.StreamWriter]:
    """Send req (with our swarm id) to a node's snapshot port; its answer line, and the open
    stream for what follows (a `get`'s bytes). The caller closes the writer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(addr[0], addr[1], limit=MAX_LINE), timeout)
    writer.write(line({**req, "swarm": swarm_hex}))
    await writer.drain()
    raw = await asyncio.wait_for(reader.readline(), timeout)
    if not raw:
        return {"ok": False, "error": "connection closed"}, reader, writer
    return parse_line(raw), reader, writer


async def ask(addr, swarm_hex: str, req: dict, timeout: float = TIMEOUT_S) -> dict | None:
    """One request, its answer when it is ok; None for an error answer or an unreachable,
    slow or garbled peer (a join or compaction just asks another)."""
    try:
        ans, _, writer = await request(addr, swarm_hex, req, timeout)
        writer.close()
        return ans if ans.get("ok") else None
    except (OSError, asyncio.TimeoutError, ValueError):
        return None


def vv_to_json(vv: dict[bytes, int]) -> dict[str, int]:
    return {o.hex(): int(n) for o, n in sorted(vv.items()) if n}


def vv_from_json(obj) -> dict[bytes, int]:
    """A peer's version vector; ValueError on anything malformed."""
    if not isinstance(obj, dict) or len(obj) > 100_000:
        raise ValueError("vv must be an object")
    out = {}
    for k, v in obj.items():
        o = bytes.fromhex(k)
        if len(o) != 16 or isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 62:
            raise ValueError("bad vv entry")
        if v:
            out[o] = v
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
