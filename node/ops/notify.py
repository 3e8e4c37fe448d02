"""sd_notify(3) in a few lines: READY, STATUS, WATCHDOG and STOPPING for Type=notify units.

The protocol is one datagram of newline-separated KEY=VALUE pairs to the Unix datagram
socket named by $NOTIFY_SOCKET ("@name" is an abstract socket). Without $NOTIFY_SOCKET
(not under systemd) every call is a no-op, so the daemon runs the same everywhere.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("onebyte.node.ops.notify")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None):
        env = os.environ if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        self.watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def notify(self, **fields: str | int) -> bool:
        """Send e.g. notify(READY=1, STATUS="serving"); True if a datagram was sent."""
        if self.address is None:
            return False
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop: if the receiver stops reading, drop the message.
                self._sock.setblocking(False)
            self._sock.sendto(msg, self.address)
            return True
        except BlockingIOError:
            log.debug("sd_notify: %r not reading, message dropped", self.address)
            return False
        except OSError as exc:  # systemd went away or the socket is wrong: never fatal
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str = "leaving the swarm") -> bool:
        return self.notify(STOPPING=1, STATUS=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_usec(env) -> int | None:
    """$WATCHDOG_USEC, honouring $WATCHDOG_PID (the watchdog may be meant for another process)."""
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec)
