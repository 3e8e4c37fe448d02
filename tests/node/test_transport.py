"""UDP transport: IPv4, IPv6, dual-stack and link-local addressing as the engine sees it."""

import asyncio
import ipaddress
import socket

import pytest

from onebyte.node.errors import ConfigError
from onebyte.node.transport import open_udp, resolve_peer


async def _exchange(listen, send_family, send_to):
    got = asyncio.Queue()
    t = await open_udp(listen, lambda data, addr: got.put_nowait((data, addr)))
    try:
        port = t.local_addr[1]
        assert port != 0
        with socket.socket(send_family, socket.SOCK_DGRAM) as s:
            s.bind((send_to, 0))
            s.sendto(b"hello", (send_to, port))
            data, addr = await asyncio.wait_for(got.get(), 10)
            assert data == b"hello"
            # the sender, as the engine will see it and as resolve_peer spells it
            assert addr == await resolve_peer((send_to, s.getsockname()[1]), t.family)
            t.sendto(b"back", addr)
            assert s.recv(100) == b"back"
    finally:
        t.close()


async def test_ipv4():
    await _exchange(("127.0.0.1", 0), socket.AF_INET, "127.0.0.1")


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
async def test_ipv6_and_dual_stack():
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    await _exchange(("::1", 0), socket.AF_INET6, "::1")
    await _exchange(("::", 0), socket.AF_INET, "127.0.0.1")   # IPv4 peer of a dual-stack node


async def test_ipv6_peer_of_ipv4_node_is_a_config_error():
    with pytest.raises(ConfigError, match="listen on"):
        await resolve_peer(("2001:db8::1", 7), socket.AF_INET)


def _link_local() -> tuple[str, str] | None:
    """(address, interface) of a usable IPv6 link-local address of this machine, if any."""
    try:
        lines = open("/proc/net/if_inet6").read().splitlines()
    except OSError:
        return None
    for line in lines:
        hexaddr, _idx, _plen, scope, flags, name = line.split()
        if scope == "20" and not int(flags, 16) & 0x48:  # link scope; not tentative, DAD not failed
            return str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))), name
    return None


def _link_local_or_skip() -> tuple[str, str]:
    ll = _link_local()
    if ll is None:
        reason = "no IPv6 link-local address on this machine (/proc/net/if_inet6)"
        print(f"skipping: {reason}")
        pytest.skip(reason)
    return ll


async def test_link_local_peer_keeps_its_zone_and_is_answered():
    # A link-local peer can only be answered through its interface: the zone must survive from
    # the received datagram through the engine's address back to sendto, on a specific listen
    # address and on a dual-stack wildcard alike.
    ip, ifname = _link_local_or_skip()
    index = socket.if_nametoindex(ifname)
    for listen in ((f"{ip}%{ifname}", 0), ("::", 0)):
        got = asyncio.Queue()
        t = await open_udp(listen, lambda data, addr: got.put_nowait((data, addr)))
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.bind((ip, 0, 0, index))
                s.sendto(b"hello", (ip, t.local_addr[1], 0, index))
                data, addr = await asyncio.wait_for(got.get(), 10)
                assert addr == (f"{ip}%{index}", s.getsockname()[1])
                assert addr == await resolve_peer((f"{ip}%{ifname}", s.getsockname()[1]), t.family)
                t.sendto(b"back", addr)
                s.settimeout(10)
                assert s.recv(100) == b"back"
                assert t.send_errors == 0
        finally:
            t.close()


async def test_zone_names_become_interface_indexes():
    lo = socket.if_nameindex()[0]  # any interface will do: only the zone's spelling is checked
    assert await resolve_peer((f"fe80::1%{lo[1]}", 7), socket.AF_INET6) == (f"fe80::1%{lo[0]}", 7)
    assert await resolve_peer((f"FE80::0001%{lo[0]}", 7), socket.AF_INET6) == (f"fe80::1%{lo[0]}", 7)
    assert await resolve_peer(("::1", 7), socket.AF_INET6) == ("::1", 7)


async def test_unknown_zone_is_a_config_error_or_a_counted_send_error():
    with pytest.raises(ConfigError, match="no network interface 'nosuchif0'"):
        await resolve_peer(("fe80::1%nosuchif0", 7), socket.AF_INET6)
    with pytest.raises(ConfigError, match="cannot bind"):
        await open_udp(("fe80::1%nosuchif0", 0), lambda data, addr: None)
    t = await open_udp(("::1", 0), lambda data, addr: None)
    try:
        t.sendto(b"x", ("fe80::1%nosuchif0", 7))  # e.g. a zone learned from a peer: counted, not raised
        assert t.send_errors == 1
    finally:
        t.close()


async def test_sends_are_dropped_and_counted_while_the_socket_is_paused():
    got = asyncio.Queue()
    rx = await open_udp(("127.0.0.1", 0), lambda data, addr: got.put_nowait(data))
    tx = await open_udp(("127.0.0.1", 0), lambda data, addr: None)
    try:
        tx._protocol.pause_writing()  # what asyncio calls when the kernel's send buffer is full
        tx.sendto(b"dropped", rx.local_addr)
        assert tx.send_errors == 1
        tx._protocol.resume_writing()
        tx.sendto(b"sent", rx.local_addr)
        assert await asyncio.wait_for(got.get(), 10) == b"sent"
        assert got.empty() and tx.send_errors == 1
    finally:
        tx.close()
        rx.close()
