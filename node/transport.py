"""UDP transport: an asyncio DatagramProtocol that feeds datagrams to a callback.

Why a plain DatagramProtocol and not asyncio-dgram: the engine is sans-IO and
synchronous, so the natural shape is "the loop calls us for each datagram" —
`datagram_received` does exactly that with no reader task to own, cancel and await
at shutdown. asyncio-dgram wraps the same protocol to offer `await recv()`, which
would only add a task and a queue between the socket and the engine.

One socket per node, IPv4 or IPv6 after the listen address. An IPv6 wildcard
listener ("[::]:port") is dual-stack (IPV6_V6ONLY=0), and IPv4 peers are then
addressed as IPv4-mapped IPv6 ("::ffff:10.0.0.2"), which is also how the kernel
reports their datagrams, so one peer has one address either way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Callable

from .config import Addr, format_addr
from .errors import ConfigError, UserError

log = logging.getLogger("onebyte.node.transport")

RCVBUF = 4 << 20  # absorb bursts (and floods) without the kernel dropping good datagrams


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Addr], None]):
        self.on_datagram = on_datagram
        self.send_errors = 0

    def datagram_received(self, data: bytes, addr) -> None:
        # IPv6 addresses come as (host, port, flowinfo, scope_id); the engine sees (host, port).
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a dead peer and the like: expected churn, not an error.
        self.send_errors += 1
        log.debug("UDP error: %s", exc)


class UdpTransport:
    def __init__(self, transport: asyncio.DatagramTransport, protocol: _Protocol, family: int):
        self._transport = transport
        self._protocol = protocol
        self.family = family

    @property
    def local_addr(self) -> Addr:
        a = self._transport.get_extra_info("sockname")
        return (a[0], a[1])

    @property
    def send_errors(self) -> int:
        return self._protocol.send_errors

    def sendto(self, data: bytes, addr: Addr) -> None:
        try:
            self._transport.sendto(data, (addr[0], addr[1]))
        except OSError as exc:  # unroutable peer address: count it, keep serving
            self._protocol.send_errors += 1
            log.debug("sendto %s failed: %s", format_addr(addr), exc)

    def close(self) -> None:
        self._transport.close()


async def open_udp(listen: Addr, on_datagram: Callable[[bytes, Addr], None]) -> UdpTransport:
    loop = asyncio.get_running_loop()
    host, port = listen
    family = socket.AF_INET6 if _is_v6(host) else socket.AF_INET
    if not _is_ip(host):
        infos = await _resolve(host, port, 0)
        family, host = infos[0][0], infos[0][4][0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"[node] listen {format_addr(listen)}: cannot bind UDP socket: "
                          f"{exc.strerror or exc}") from None
    sock.setblocking(False)
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(on_datagram), sock=sock)
    return UdpTransport(transport, protocol, family)


async def resolve_peer(addr: Addr, family: int) -> Addr:
    """A configured peer address as the engine will see it from this socket's family."""
    host, port = addr
    if not _is_ip(host):
        infos = await _resolve(host, port, family if family == socket.AF_INET else 0)
        host = infos[0][4][0]
    if family == socket.AF_INET6 and not _is_v6(host):
        return (f"::ffff:{host}", port)  # the form the kernel reports (not ipaddress's hex form)
    elif family == socket.AF_INET and _is_v6(host):
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
        if mapped is None:
            raise ConfigError(f"peer {format_addr(addr)} is IPv6 but [node] listen is IPv4; "
                              'listen on "[::]:port" to reach IPv6 peers')
        host = str(mapped)
    return (str(ipaddress.ip_address(host)), port)


async def _resolve(host: str, port: int, family: int):
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve {host!r}: {exc.strerror}") from None
    if not infos:
        raise UserError(f"cannot resolve {host!r}")
    return infos


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _is_v6(host: str) -> bool:
    return ":" in host
