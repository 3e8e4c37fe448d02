"""Status-socket commands (spec: docs/status.md): one handler per command, through a table.

`Control` answers on the loop thread. Commands that need the model (digest, snapshot,
eval, stop_producing) go to the worker as command objects (node/train/worker.py) and are
awaited; everything else is read from the daemon directly. Until the daemon is ready
(model loading, replaying its log) only `status` and `leave` answer, with the phase.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Awaitable, Callable

from ..errors import UserError
from .members import build_amendments, build_members
from ..storage.snapshot import write_standalone
from .stats import build_status
from ..train.worker import Digest, Evaluate, Snapshot, StopProducing

COMMANDS = ("status", "members", "digest", "snapshot", "eval", "stop_producing", "leave", "amend")


class Control:
    def __init__(self, daemon):
        self.d = daemon
        self._table: dict[str, Callable[[dict], Awaitable[dict]]] = {
            "status": self.status, "members": self.members, "digest": self.digest,
            "snapshot": self.snapshot, "eval": self.eval, "stop_producing": self.stop_producing,
            "leave": self.leave, "amend": self.amend,
        }

    async def handle(self, req: dict) -> dict:
        handler = self._table.get(req["cmd"])
        if handler is None:
            raise UserError(f"unknown cmd {req['cmd']!r}; known: {', '.join(COMMANDS)}")
        if not self.d.ready and handler not in (self.status, self.leave):
            raise UserError(f"the daemon is starting ({self.d.phase.describe()}); retry when it is ready")
        return await handler(req)

    async def status(self, req: dict) -> dict:
        if not self.d.ready:
            return {"ok": True, **self.d.phase.status(self.d)}
        return {"ok": True, **build_status(self.d)}

    async def members(self, req: dict) -> dict:
        return {"ok": True, "members": build_members(self.d), "amendments": build_amendments(self.d)}

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
            took = self.d.engine.amend(a, self.d.loop.time())
        except ProtocolError as exc:
            raise UserError(f"amendment {a.number} refused: {exc}") from None
        self.d.after_engine_call()
        return {"ok": True, "number": a.number, "took_effect": [describe(x) for x in took],
                "in_effect": self.d.engine.amendments.applied}

    async def digest(self, req: dict) -> dict:
        return await self._ask_worker(lambda reply: Digest(reply))

    async def snapshot(self, req: dict) -> dict:
        path = req.get("path")
        if path is None:
            self.d.sd.exports.mkdir(exist_ok=True)
            path = self.d.sd.exports / f"snapshot-{int(time.time())}.safetensors"
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
        self.d.request_stop()
        return {"ok": True}

    async def _ask_worker(self, make_command) -> dict:
        worker, loop = self.d.worker, self.d.loop
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
