"""Status-socket commands (spec: docs/status.md): one handler per command, through a table.

`Control` answers on the loop thread. Commands that need the model (digest, snapshot,
eval, stop_producing) go to the worker as command objects (node/train/worker.py) and are
awaited; the rest are the daemon's own answers, handed in as callables (it composes its
status from its components). Until the daemon is ready (model loading, replaying its log)
only `status` and `leave` answer, with the phase.
"""

from __future__ import annotations

import time
from pathlib import Path
import asyncio
from typing import Awaitable, Callable

from ..errors import UserError
from ..storage.snapshot import write_standalone
from ..train.worker import Digest, Evaluate, Snapshot, StopProducing

COMMANDS = ("status", "members", "digest", "snapshot", "eval", "stop_producing", "leave", "amend")


class Control:
    """ready() -> bool; starting() -> what the start-up is doing; status() and members() -> the
    answer's fields; amend(amendment) -> (amendments that took effect, numbers in effect);
    exports: where unnamed snapshots go; worker() -> the running Worker or None; stop()."""

    def __init__(self, *, ready: Callable[[], bool], starting: Callable[[], str], status: Callable[[], dict],
                 members: Callable[[], dict], amend: Callable, exports: Path, worker: Callable[[], object],
                 stop: Callable[[], None]):
        self.ready, self.starting, self._status, self._members = ready, starting, status, members
        self._amend, self.exports, self.worker, self.stop = amend, exports, worker, stop
        self._table: dict[str, Callable[[dict], Awaitable[dict]]] = {
            "status": self.status, "members": self.members, "digest": self.digest,
            "snapshot": self.snapshot, "eval": self.eval, "stop_producing": self.stop_producing,
            "leave": self.leave, "amend": self.amend,
        }

    async def handle(self, req: dict) -> dict:
        handler = self._table.get(req["cmd"])
        if handler is None:
            raise UserError(f"unknown cmd {req['cmd']!r}; known: {', '.join(COMMANDS)}")
        if not self.ready() and handler not in (self.status, self.leave):
            raise UserError(f"the daemon is starting ({self.starting()}); retry when it is ready")
        return await handler(req)

    async def status(self, req: dict) -> dict:
        return {"ok": True, **self._status()}

    async def members(self, req: dict) -> dict:
        return {"ok": True, **self._members()}

    async def amend(self, req: dict) -> dict:
        """A signed membership amendment (hex of its packed form, as `onebyte admit` writes it):
        checked by the engine as a peer's would be, then kept, logged and gossiped."""
        from onebyte.protocol import ProtocolError
        from onebyte.protocol.amendments import describe
        from onebyte.protocol.wire import WireError, decode_amend
        raw = req.get("amendment")
        try:
            a = decode_amend(bytes.fromhex(raw)) if isinstance(raw, str) else None
        except (ValueError, WireError):
            a = None
        if a is None:
            raise UserError("amendment must be the hex of a packed amendment (`onebyte admit --save` writes one)")
        try:
            took, in_effect = self._amend(a)
        except ProtocolError as exc:
            raise UserError(f"amendment {a.number} refused: {exc}") from None
        return {"ok": True, "number": a.number, "took_effect": [describe(x) for x in took],
                "in_effect": in_effect}

    async def digest(self, req: dict) -> dict:
        return await self._ask_worker(lambda reply: Digest(reply))

    async def snapshot(self, req: dict) -> dict:
        path = req.get("path")
        if path is None:
            self.exports.mkdir(exist_ok=True)
            path = self.exports / f"snapshot-{int(time.time())}.safetensors"
        if not isinstance(path, (str, Path)):
            raise UserError(f"snapshot path must be a string, got {path!r}")
        path = Path(path)
        if not path.is_absolute():
            raise UserError(f"snapshot path must be absolute, got {str(path)!r}")

        def write(replica, vv, digest):
            return write_standalone(path, replica, vv, digest)
        return await self._ask_worker(lambda reply: Snapshot(write, reply))

    async def eval(self, req: dict) -> dict:
        n = req.get("examples")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise UserError(f"eval examples must be a positive integer, got {n!r}")
        return await self._ask_worker(lambda reply: Evaluate(n, reply))

    async def stop_producing(self, req: dict) -> dict:
        return await self._ask_worker(lambda reply: StopProducing(reply))

    async def leave(self, req: dict) -> dict:
        self.stop()
        return {"ok": True}

    async def _ask_worker(self, make_command) -> dict:
        worker, loop = self.worker(), asyncio.get_running_loop()
        if worker is None or not worker.is_alive():
            raise UserError("the worker is not running")
        fut = loop.create_future()

        def reply(result):  # worker thread
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(result))
        if not worker.submit(make_command(reply)):
            raise UserError("busy: too many pending requests, retry")
        result = await fut
        if "error" in result:
            return {"ok": False, **result}
        return {"ok": True, **result}
