"""The status socket: a Unix stream socket speaking JSON lines (spec: docs/status.md).

Each request is one JSON object on one line, e.g. {"cmd": "status"}; each answer is
one JSON object on one line with "ok": true|false. A client may send several requests
on one connection. The socket is created with owner-only permissions (0600): the
status shows peers and addresses, and "snapshot" makes the daemon write files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Awaitable, Callable

from ..errors import DaemonUnreachable, UserError

log = logging.getLogger("onebyte.node.ops.status")

MAX_LINE = 64 * 1024
MAX_SOCKET_PATH = 107   # sun_path is 108 bytes with its terminating NUL
Handler = Callable[[dict], Awaitable[dict]]


class StatusServer:
    """Serves JSON-line requests on a Unix socket; `handler(request) -> answer dict`."""

    def __init__(self, path: Path, handler: Handler):
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise UserError(f"status_socket {self.path} is {len(os.fsencode(self.path))} bytes long; Unix sockets "
                            f"allow {MAX_SOCKET_PATH}: set [node] status_socket to a shorter path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            # The state-dir lock guarantees no other daemon of this state owns it: a stale
            # socket from a killed run. Anything that is not a socket we leave alone.
            if not stat.S_ISSOCK(st.st_mode):
                raise UserError(f"status_socket {self.path} exists and is not a socket; "
                                "remove it or choose another path")
            os.unlink(self.path)
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_LINE)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _send(writer, {"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    return
                if not line:
                    return
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                        raise ValueError('expected a JSON object with a string "cmd"')
                except RecursionError:  # deeply nested JSON: json gives up, so do we
                    await _send(writer, {"ok": False, "error": "bad request: nested too deeply"})
                    continue
                except ValueError as exc:
                    await _send(writer, {"ok": False, "error": f"bad request: {exc}"})
                    continue
                try:
                    answer = await self.handler(req)
                except UserError as exc:
                    answer = {"ok": False, "error": str(exc)}
                except Exception as exc:  # a bug must not take the daemon down with it
                    log.exception("status request %r failed", req.get("cmd"))
                    answer = {"ok": False, "error": f"internal error: {exc}"}
                await _send(writer, answer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            if self._conns:
                await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


async def _send(writer: asyncio.StreamWriter, obj: dict) -> None:
    writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


def is_ready(status: dict | None) -> bool:
    """A status answer of a daemon that serves (not one still loading or replaying)."""
    return bool(status) and status.get("phase", {}).get("name") == "ready"


def is_prepared(status: dict | None) -> bool:
    """A ready daemon whose worker is past its preparation (e.g. the frozen-trunk cache)."""
    return is_ready(status) and status.get("worker_state") not in ("starting", "preparing")


def request(path: str | Path, req: dict, timeout: float = 30.0) -> dict:
    """One request to a running daemon (blocking client used by the CLI)."""
    path = Path(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
        except FileNotFoundError:
            raise DaemonUnreachable(f"no daemon: status socket {path} does not exist "
                                    "(is `onebyte run` running with this config?)") from None
        except ConnectionRefusedError:
            raise DaemonUnreachable(f"no daemon listening on {path} (stale socket)") from None
        except PermissionError:
            raise DaemonUnreachable(f"permission denied on {path}: run as the daemon's user "
                                    "(the socket is owner-only)") from None
        except OSError as exc:
            raise DaemonUnreachable(f"cannot connect to {path}: {exc.strerror or exc}") from None
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(1 << 16)
            except socket.timeout:
                raise DaemonUnreachable(f"daemon at {path} did not answer within {timeout:.0f}s") from None
            if not chunk:
                raise DaemonUnreachable(f"daemon at {path} closed the connection without answering")
            buf += chunk
        return json.loads(buf)
    finally:
        s.close()
