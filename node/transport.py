"""UDP transport: an asyncio DatagramProtocol that feeds datagrams to a callback.

Why a plain DatagramProtocol and not asyncio-dgram (declared, and tried for this): the
engine is sans-IO and synchronous, so the natural shape is "the loop calls us for each
datagram" and "send this now" -- `datagram_received` and a non-blocking `sendto`. asyncio-dgram
(3.0) wraps the same asyncio protocol behind `await recv()` / `await send()`: receiving
would need a reader task and an unbounded queue between the socket and the engine, sending
is a coroutine only (the engine's output is flushed from synchronous code), and a failed send
is re-raised by the *next* send or recv, so the next datagram -- to another, healthy peer --
is never sent.

One socket per node, IPv4 or IPv6 after the listen address. An IPv6 wildcard
listener ("[::]:port") is dual-stack (IPV6_V6ONLY=0), and IPv4 peers are then
addressed as IPv4-mapped IPv6 ("::ffff:10.0.0.2"), which is also how the kernel
reports their datagrams, so one peer has one address either way.

The engine keys peers by (host, port). A link-local IPv6 address is only meaningful with its
zone (the interface), so its host carries it: "fe80::1%3", with the interface index the
kernel reports; the transport turns it back into the socket address's scope id to answer.

Back-pressure: if the kernel's send buffer is full, asyncio buffers datagrams in user space
and pauses the protocol past its high-water mark; from then until it resumes, datagrams are
dropped and counted as send errors, as the kernel would drop them. Nothing is lost for good:
anti-entropy fetches what a push missed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Callable

from .config import Addr, format_addr
from .errors import ConfigError, ResolveError

log = logging.getLogger("onebyte.node.transport")

RCVBUF = 4 << 20  # absorb bursts (and floods) without the kernel dropping good datagrams


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Addr], None]):
        self.on_datagram = on_datagram
        self.send_errors = 0
        self.paused = False

    def datagram_received(self, data: bytes, addr) -> None:
        self.on_datagram(data, engine_addr(addr))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

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
        return engine_addr(self._transport.get_extra_info("sockname"))

    @property
    def send_errors(self) -> int:
        return self._protocol.send_errors

    def sendto(self, data: bytes, addr: Addr) -> None:
        """Send now or drop (counted): never blocks, never raises for a bad peer address."""
        if self._protocol.paused:
            self._protocol.send_errors += 1
            return
        try:
            self._transport.sendto(data, socket_addr(addr))
        except (OSError, ValueError) as exc:  # unroutable address, unknown zone: count it, keep serving
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
        family, host = infos[0][0], engine_addr(infos[0][4])[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        sock.bind(socket_addr((host, port)))
    except (OSError, ValueError) as exc:
        sock.close()
        raise ConfigError(f"[node] listen {format_addr(listen)}: cannot bind UDP socket: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    sock.setblocking(False)
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(on_datagram), sock=sock)
    return UdpTransport(transport, protocol, family)


async def resolve_peer(addr: Addr, family: int) -> Addr:
    """A configured peer address as the engine will see it from this socket's family."""
    host, port = addr
    if not _is_ip(host):
        infos = await _resolve(host, port, family if family == socket.AF_INET else 0)
        host = engine_addr(infos[0][4])[0]
    if family == socket.AF_INET6 and not _is_v6(host):
        return (f"::ffff:{host}", port)  # the form the kernel reports (not ipaddress's hex form)
    elif family == socket.AF_INET and _is_v6(host):
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
        if mapped is None:
            raise ConfigError(f"peer {format_addr(addr)} is IPv6 but [node] listen is IPv4; "
                              'listen on "[::]:port" to reach IPv6 peers')
        host = str(mapped)
    if "%" in host:  # the zone as the kernel reports it: an interface index, not a name
        try:
            host = engine_addr(socket_addr((host, port)))[0]
        except (OSError, ValueError):
            raise ConfigError(f"peer {format_addr(addr)}: no network interface "
                              f"{host.partition('%')[2]!r} on this machine") from None
    return (str(ipaddress.ip_address(host)), port)


def engine_addr(sockaddr) -> Addr:
    """A socket address as the engine keys peers: (host, port), a link-local host with its zone."""
    if len(sockaddr) == 4 and sockaddr[3]:  # IPv6 (host, port, flowinfo, scope_id)
        return (f"{sockaddr[0]}%{sockaddr[3]}", sockaddr[1])
    return (sockaddr[0], sockaddr[1])


def socket_addr(addr: Addr):
    """The engine's (host, port) as bind/sendto take it: a zone ("%3" or "%eth0") becomes the
    scope id, which Python's socket module would otherwise set to 0 whatever the host says."""
    host, port = addr[0], addr[1]
    if "%" not in host:
        return (host, port)
    ip, _, zone = host.partition("%")
    return (ip, port, 0, int(zone) if zone.isdigit() else socket.if_nametoindex(zone))


async def _resolve(host: str, port: int, family: int):
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ResolveError(f"cannot resolve {host!r}: {exc.strerror}") from None
    if not infos:
        raise ResolveError(f"cannot resolve {host!r}")
    return infos


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _is_v6(host: str) -> bool:
    return ":" in host
