"""UDP transport: IPv4, IPv6, dual-stack addressing as the engine sees it."""

import asyncio
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
