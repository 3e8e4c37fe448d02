"""`listen = "[::]:PORT"` (the example config): the snapshot TCP listener takes IPv4 peers too,
as the UDP socket does (asyncio alone would make it IPv6-only)."""
import asyncio
import socket
from types import SimpleNamespace

import pytest

from onebyte.node.join.snapshot_service import SnapshotServer


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 on this machine")
async def test_snapshot_listener_on_any_v6_address_accepts_ipv4(tmp_path):
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.bind(("::", 0))
        port = probe.getsockname()[1]
    genesis = SimpleNamespace(swarm_id=b"\x00" * 32, seeder=None)
    server = SnapshotServer(genesis, b"\x01" * 16, tmp_path, None, list, lambda: None, rate=1 << 20,
                            attest_max_updates=0)
    assert await server.start("::", port)
    try:
        for host in ("127.0.0.1", "::1"):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            writer.close()
            await writer.wait_closed()
    finally:
        await server.close()
