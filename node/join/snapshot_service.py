"""Snapshot service: a node serves its newest snapshot to joining peers over TCP.

It listens on the same host and port number as the node's UDP socket (TCP and UDP ports
are separate name spaces), so a peer's gossip address is also where its snapshot is. The
transport is *not* authenticated: everything a joiner takes from it is checked by content
(docs/protocol.md, "Snapshot join"): the file against its SHA-256, the weights against the
digest, and the (digest, version vector) pair against other members' attestations.

One request per connection, a JSON line each way (at most MAX_LINE bytes), then for `get`
the raw bytes:

    {"op": "info",   "swarm": hex}                        -> snapshot, floor, updates, peers
    {"op": "get",    "swarm": hex, "sha256": hex, "offset": n, "length": n}
                                                          -> {"ok", "length"} + bytes
    {"op": "attest", "swarm": hex, "vv": {origin hex: n}} -> {"ok", "digest"}: this node's
                                                             weights digest at that vv

`get` is resumable by byte offset and rate-limited (all connections share one token bucket),
so serving a snapshot does not starve the node's own replay and training of I/O. `attest`
answers from the snapshot itself when the vv is its own, from the live weights when the vv
is the applied one, or by undoing at most `snapshot_attest_max_updates` applied updates
(exact on the grid), hashing, and applying them again, in the worker thread, one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Callable

from ..config import format_addr
from ..storage.snapshot import read_snapshot
from ..storage.snapwire import CHUNK, MAX_LINE, file_sha256, parse_line, vv_from_json, vv_to_json
from ..storage.snapwire import line as wire_line
from ..train.worker import Attest

log = logging.getLogger("onebyte.node.join.snapshot_service")

MAX_GET = 64 << 20       # bytes per `get` request
MAX_CONNECTIONS = 8
REQUEST_TIMEOUT_S = 30.0


class ByteRate:
    """Bytes per second served to joiners, shared by every connection (sleeps to pay)."""
    def __init__(self, rate: float):
        self.rate = float(rate)
        self.tokens = self.rate
        self.at = time.monotonic()

    async def take(self, n: int) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= min(n, self.rate):
                self.tokens -= n
                return
            await asyncio.sleep((min(n, self.rate) - self.tokens) / self.rate)


class SnapshotServer:
    """Serves the newest snapshot in `snapshots` to members of genesis's swarm, says what
    `update_log` holds and which peers are alive (`live_peers()`: [(node_id, addr)]), and
    attests a version vector through the worker (`worker()`: the running Worker or None)."""

    def __init__(self, genesis, node_id: bytes, snapshots: Path, update_log, live_peers: Callable[[], list],
                 worker: Callable[[], object], rate: int, attest_max_updates: int):
        self.swarm_hex, self.seeder = genesis.swarm_id.hex(), genesis.seeder
        self.node_id, self.snapshots, self.update_log = node_id, snapshots, update_log
        self.live_peers, self.worker = live_peers, worker
        self.bucket = ByteRate(rate)
        self.attest_max = attest_max_updates
        self._attest_lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._sha: tuple | None = None    # (weights path, mtime, sha256) of the file served
        self._open = 0
        self.counters = {"requests": 0, "bytes_served": 0, "attests": 0, "refused": 0}

    async def start(self, host: str, port: int) -> bool:
        """Listen on TCP host:port. An IPv6 host ("::") listens dual-stack, as the UDP socket
        does: asyncio would set IPV6_V6ONLY and refuse IPv4 peers, so the socket is made here."""
        try:
            if ":" in host:
                sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    sock.bind((host, port))
                except OSError:
                    sock.close()
                    raise
                self._server = await asyncio.start_server(self._handle, sock=sock, limit=MAX_LINE)
            else:
                self._server = await asyncio.start_server(self._handle, host, port, limit=MAX_LINE)
        except OSError as exc:
            log.warning("not serving snapshots: cannot listen on TCP %s: %s", format_addr((host, port)),
                        exc.strerror)
            return False
        return True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > MAX_CONNECTIONS:
                self.counters["refused"] += 1
                return await self._reply(writer, {"ok": False, "error": "busy"})
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            self.counters["requests"] += 1
            try:
                req = parse_line(line)
                if req.get("swarm") != self.swarm_hex:
                    raise ValueError("wrong swarm")
                op = req.get("op")
                if op == "info":
                    await self._reply(writer, await self._info())
                elif op == "get":
                    await self._get(req, writer)
                elif op == "attest":
                    await self._reply(writer, await self._attest(vv_from_json(req.get("vv"))))
                else:
                    raise ValueError(f"unknown op {op!r}")
            except (ValueError, TypeError) as exc:
                await self._reply(writer, {"ok": False, "error": str(exc)[:200]})
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("snapshot service: request failed")
        finally:
            self._open -= 1
            writer.close()

    async def _reply(self, writer, obj: dict) -> None:
        writer.write(wire_line(obj))
        await writer.drain()

    async def _current(self):
        snap = read_snapshot(self.snapshots)
        if snap is None:
            return None, None
        st = snap.weights.stat()
        key = (snap.weights, st.st_mtime_ns, st.st_size)
        if self._sha is None or self._sha[0] != key:
            self._sha = (key, await asyncio.to_thread(file_sha256, snap.weights))
        return snap, self._sha[1]

    async def _info(self) -> dict:
        snap, sha = await self._current()
        peers = [format_addr(addr) for _, addr in self.live_peers()]
        ulog = self.update_log
        return {"ok": True, "node": self.node_id.hex(),
                "snapshot": None if snap is None else {
                    "digest": snap.digest, "vv": vv_to_json(snap.vv), "updates": snap.updates,
                    "sha256": sha, "size": snap.weights.stat().st_size},
                "floor": vv_to_json(ulog.floor_vv()), "log": vv_to_json(ulog.updates_vv()), "peers": peers}

    async def _get(self, req: dict, writer) -> None:
        snap, sha = await self._current()
        offset, length = req.get("offset"), req.get("length")
        if snap is None or req.get("sha256") != sha:
            return await self._reply(writer, {"ok": False, "error": "no such snapshot (a newer one replaced it)"})
        if not (isinstance(offset, int) and isinstance(length, int) and offset >= 0 and 0 < length):
            raise ValueError("offset and length must be integers")
        size = snap.weights.stat().st_size
        n = max(0, min(length, MAX_GET, size - offset))
        await self._reply(writer, {"ok": True, "length": n})
        # Opened once: a newer snapshot replacing the file meanwhile does not change these bytes.
        with open(snap.weights, "rb") as f:
            f.seek(offset)
            while n > 0:
                want = min(CHUNK, n)
                await self.bucket.take(want)
                data = await asyncio.to_thread(f.read, want)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                n -= len(data)
                self.counters["bytes_served"] += len(data)

    async def _attest(self, vv: dict[bytes, int]) -> dict:
        snap = read_snapshot(self.snapshots)
        if snap is not None and {o: n for o, n in snap.vv.items() if n} == vv:
            return {"ok": True, "digest": snap.digest, "from": "snapshot"}
        worker = self.worker()
        if worker is None or not worker.is_alive():
            return {"ok": False, "error": "not ready"}
        async with self._attest_lock:
            self.counters["attests"] += 1
            loop = asyncio.get_running_loop()
            fut = loop.create_future()

            def reply(result):   # worker thread
                loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))
            if not worker.submit(Attest(vv, self._undo_for(vv), reply)):
                return {"ok": False, "error": "busy"}
            result = await fut
            return result if "ok" in result else {"ok": False, **result}

    def _undo_for(self, vv: dict[bytes, int]):
        """For the worker (Attest): the updates between `vv` and what it applied, from the
        log, at most attest_max of them; or the answer saying why not."""
        ulog, limit, seeder = self.update_log, self.attest_max, self.seeder()

        def undo_for(applied: dict):
            diff = []
            for o, top in applied.items():
                lo = vv.get(o, 0)
                if top - lo > limit or len(diff) + top - lo > limit:
                    return {"ok": False, "error": "too far behind this node to attest"}
                qs = ulog.qs_of(o, lo + 1, top)
                if len(qs) != top - lo:
                    return {"ok": False, "error": "compacted past that version vector"}
                diff.extend(seeder.update(o, s, q) for s, q in zip(range(lo + 1, top + 1), qs))
            return diff
        return undo_for
