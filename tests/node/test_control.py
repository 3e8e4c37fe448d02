"""Status-socket routing and its user errors, without a model: a daemon that is still
starting answers `status` with its phase and refuses model commands; bad requests
(nested JSON, wrong types, a socket path too long) are one clear error each."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest

from onebyte.node.ops.control import Control
from onebyte.node.errors import ConfigError, UserError
from onebyte.node.genesis import parse_genesis, protocol_config
from onebyte.node.ops.stats import Phase
from onebyte.node.ops.status import StatusServer, is_ready, request


def starting_daemon():
    g = parse_genesis({"swarm": {"base_model": "tiny", "base_model_hash": "0" * 64, "name": "t"}})
    return SimpleNamespace(ready=False, phase=Phase(), node_id=b"\x01" * 16, genesis=g, started=0.0,
                           request_stop=lambda: None, exports=None)


def control_of(d) -> Control:
    """Control wired to a fake daemon as node/daemon.py wires it to the real one (status while
    starting: the phase; nothing past that is reached here)."""
    return Control(ready=lambda: d.ready, starting=d.phase.describe, status=lambda: d.phase.status(d),
                   members=lambda: {}, amend=None, exports=d.exports, worker=lambda: None, stop=d.request_stop)


async def test_a_starting_daemon_answers_status_with_its_phase_and_refuses_model_commands():
    d = starting_daemon()
    control = control_of(d)
    d.phase.set("replaying log", 1200, 5000)
    st = await control.handle({"cmd": "status"})
    assert st["ok"] and not is_ready(st)
    assert st["phase"]["name"] == "replaying log" and (st["phase"]["done"], st["phase"]["total"]) == (1200, 5000)
    assert st["node_id"] == "01" * 16 and st["swarm_name"] == "t" and st["version"]
    for cmd in ("digest", "eval", "snapshot", "members", "stop_producing"):
        with pytest.raises(UserError, match=r"starting \(replaying log 1200 of 5000"):
            await control.handle({"cmd": cmd})
    with pytest.raises(UserError, match="unknown cmd 'nope'; known: status, members"):
        await control.handle({"cmd": "nope"})


async def test_phase_is_safe_to_set_from_another_thread():
    phase = Phase()
    t = threading.Thread(target=lambda: [phase.set("replaying log", i, 1000) for i in range(1000)])
    t.start()
    seen = [phase.describe() for _ in range(200)]
    t.join()
    assert all(s.startswith(("starting", "replaying log")) for s in seen)
    assert phase.describe().startswith("replaying log 999 of 1000")


async def test_snapshot_path_of_a_wrong_type_is_a_user_error():
    d = starting_daemon()
    d.ready = True
    with pytest.raises(UserError, match="snapshot path must be a string, got 123"):
        await control_of(d).handle({"cmd": "snapshot", "path": 123})


async def test_deeply_nested_json_is_a_bad_request_not_a_crash(tmp_path):
    async def handler(req):
        return {"ok": True}
    srv = StatusServer(tmp_path / "s.sock", handler)
    await srv.start()
    try:
        deep = "[" * 100_000 + "]" * 100_000
        r, w = await asyncio.open_unix_connection(str(tmp_path / "s.sock"), limit=1 << 20)
        w.write(deep[:60_000].encode() + b"\n")   # under the line limit, far past json's recursion
        w.write(b'{"cmd": "status"}\n')
        await w.drain()
        first = json.loads(await r.readline())
        assert first == {"ok": False, "error": "bad request: nested too deeply"}
        assert json.loads(await r.readline()) == {"ok": True}   # the connection still serves
        w.close()
    finally:
        await srv.close()


async def test_a_socket_path_too_long_is_one_clear_error(tmp_path):
    async def handler(req):
        return {"ok": True}
    path = tmp_path / ("x" * 120) / "status.sock"
    with pytest.raises(UserError, match="Unix sockets allow 107"):
        await StatusServer(path, handler).start()


def test_protocol_overrides_of_the_wrong_type_name_the_field():
    g = parse_genesis({"swarm": {"base_model": "tiny", "base_model_hash": "0" * 64}})
    with pytest.raises(ConfigError, match=r"\[protocol\] fanout must be an integer, got 'x'"):
        protocol_config(g, {"fanout": "x"})
    with pytest.raises(ConfigError, match=r"\[protocol\] gossip_interval_s must be a number, got True"):
        protocol_config(g, {"gossip_interval_s": True})
    assert protocol_config(g, {"gossip_interval_s": 1}).gossip_interval_s == 1


def test_request_to_a_missing_socket_says_no_daemon(tmp_path):
    from onebyte.node.errors import DaemonUnreachable
    with pytest.raises(DaemonUnreachable, match="no daemon"):
        request(tmp_path / "none.sock", {"cmd": "status"})
