"""Config validation, genesis and swarm id, key files, sd_notify, snapshots, status socket."""

import asyncio
import json
import os
import socket
import stat

import pytest

from onebyte.node.storage import snapshot as snap
from onebyte.node.config import load_config, parse_addr, parse_config
from onebyte.node.errors import ConfigError, KeyFileError, StateError, DaemonUnreachable
from onebyte.node.genesis import compute_swarm_id, dump_toml, load_genesis, parse_genesis
from onebyte.node.keys import public_of, read_key, write_key
from onebyte.protocol.identity import node_id_of
from onebyte.node.ops.notify import Notifier
from onebyte.node.ops.status import StatusServer, request

HASH = "ab" * 32


def genesis_dict(**swarm):
    s = {"name": "t", "base_model": "tiny", "base_model_hash": HASH}
    s.update(swarm)
    return {"swarm": s, "hyper": {"eps": 0.001}, "task": {"data": "builtin:sentiment"}}


# --- config ------------------------------------------------------------------------------

def test_config_minimal_and_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    cfg = parse_config({"node": {"genesis": "g.toml", "key": "k", "state_dir": "s"}}, tmp_path / "node.toml")
    assert cfg.genesis == tmp_path / "g.toml" and cfg.state_dir == tmp_path / "s"
    assert cfg.listen == ("0.0.0.0", 7470) and cfg.peers == ()
    assert cfg.socket_path == tmp_path / "s" / "status.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/onebyte-a")
    assert str(cfg.socket_path) == "/run/onebyte-a/status.sock"
    assert cfg.fsync is True and cfg.max_steps == 0


@pytest.mark.parametrize("node, match", [
    ({"key": "k", "state_dir": "s"}, r"missing required field \[node\] genesis"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "listen": "localhost"}, r"\[node\] listen: expected"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "peers": ["1.2.3.4:0"]}, r"peers\[0\]: port must be in 1"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "peers": ["::1:80"]}, r"brackets"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "batch_size": 0}, r"batch_size must be >= 1"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "batch_size": "8"}, r"batch_size must be a int"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "fsync": 1}, r"fsync must be a bool"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "device": "tpu"}, r"device must be"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "lisen": "x"}, r"unknown field \[node\] lisen"),
    ({"genesis": "g", "key": "k", "state_dir": "s", "max_steps": -1}, r"max_steps must be >= 0"),
])
def test_config_errors_name_the_field(node, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"node": node})


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    bad.write_text("[nodes]\n")
    with pytest.raises(ConfigError, match="unknown table"):
        load_config(bad)


def test_addresses():
    assert parse_addr("[::1]:0", "x", allow_port0=True) == ("::1", 0)
    assert parse_addr("10.0.0.1:7", "x", allow_port0=False) == ("10.0.0.1", 7)
    assert parse_addr("host.example:9", "x", allow_port0=False) == ("host.example", 9)
    with pytest.raises(ConfigError):
        parse_addr("[zz]:1", "x", allow_port0=True)


def test_env_vars_in_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/creds")
    cfg = parse_config({"node": {"genesis": "/g", "key": "$CREDENTIALS_DIRECTORY/node.key", "state_dir": "/s"}})
    assert str(cfg.key) == "/run/creds/node.key"


# --- genesis -----------------------------------------------------------------------------

def test_swarm_id_ignores_formatting_not_values(tmp_path):
    g = genesis_dict()
    p1 = tmp_path / "a.toml"
    p1.write_text(dump_toml(g))
    p2 = tmp_path / "b.toml"
    p2.write_text("# comment\n[task]\ndata = 'builtin:sentiment'\n[hyper]\neps=0.001\n"
                  f"[swarm]\nbase_model_hash=\"{HASH}\"\nbase_model='tiny'\nname = 't'\n")
    a, b = load_genesis(p1), load_genesis(p2)
    assert a.swarm_id == b.swarm_id == compute_swarm_id(g)
    g2 = genesis_dict(name="u")
    assert compute_swarm_id(g2) != a.swarm_id


@pytest.mark.parametrize("change, match", [
    ({"admission": "maybe"}, "admission must be"),
    ({"base_model_hash": "xyz"}, "base_model_hash must be 64"),
    ({"members": ["nothex"]}, "members must be a list"),
    ({"admission": "closed"}, "needs at least one member"),
    ({"colour": 1}, r"unknown field \[swarm\] colour"),
    ({"record_linger_s": 0}, "must be a positive number"),
])
def test_genesis_errors(change, match):
    with pytest.raises(ConfigError, match=match):
        parse_genesis(genesis_dict(**change))


def test_genesis_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="onebyte init"):
        load_genesis(tmp_path / "missing.toml")


# --- keys --------------------------------------------------------------------------------

def test_keygen_mode_and_round_trip(tmp_path):
    p = tmp_path / "node.key"
    private = write_key(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert read_key(p) == private
    assert len(node_id_of(public_of(private))) == 16
    with pytest.raises(KeyFileError, match="already exists"):
        write_key(p)


def test_bad_keys(tmp_path):
    p = tmp_path / "k"
    with pytest.raises(KeyFileError, match="not found"):
        read_key(p)
    p.write_text("# c\nabcd\n")
    with pytest.raises(KeyFileError, match="malformed"):
        read_key(p)
    if os.getuid() != 0:  # root reads anything
        p.write_text("00" * 32)
        os.chmod(p, 0)
        with pytest.raises(KeyFileError, match="not readable"):
            read_key(p)


# --- sd_notify ---------------------------------------------------------------------------

def test_notify_against_fake_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(5)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_interval_s == 2.0
        assert n.ready("serving")
        assert srv.recv(4096) == b"READY=1\nSTATUS=serving"
        assert n.watchdog()
        assert srv.recv(4096) == b"WATCHDOG=1"
        assert n.stopping()
        assert srv.recv(4096).startswith(b"STOPPING=1\n")
        n.close()
    finally:
        srv.close()


def test_notify_never_blocks_when_nobody_reads(tmp_path):
    path = str(tmp_path / "n.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    try:
        n = Notifier({"NOTIFY_SOCKET": path})
        results = [n.watchdog() for _ in range(5000)]   # far more than the socket buffer holds
        assert results[0] and not results[-1]
        n.close()
    finally:
        srv.close()


def test_notify_disabled_and_abstract():
    assert not Notifier({}).notify(READY=1)
    assert Notifier({"NOTIFY_SOCKET": "@abc"}).address == "\0abc"
    other_pid = str(os.getpid() + 1)  # the watchdog is meant for another process: ignore it
    assert Notifier({"WATCHDOG_USEC": "100", "WATCHDOG_PID": other_pid}).watchdog_interval_s is None


# --- snapshots ---------------------------------------------------------------------------

class FakeReplica:
    def __init__(self, data=b"w0", fail=False):
        self.data, self.fail = data, fail

    def save(self, path):
        with open(path, "wb") as f:
            f.write(self.data[:1])
            if self.fail:
                raise OSError(28, "No space left on device")
            f.write(self.data[1:])

    def digest(self):
        return self.data.hex().ljust(32, "0")


def test_snapshot_commit_and_crash_keeps_previous(tmp_path, monkeypatch):
    d = tmp_path / "snaps"
    A = b"\x01" * 16
    info = snap.write_snapshot(d, FakeReplica(b"first"), {A: 3})
    got = snap.read_snapshot(d)
    assert got.vv == {A: 3} and got.weights.read_bytes() == b"first" and got.digest == info.digest
    # crash while writing the weights: the committed snapshot is untouched
    with pytest.raises(OSError):
        snap.write_snapshot(d, FakeReplica(b"second", fail=True), {A: 5})
    got = snap.read_snapshot(d)
    assert got.vv == {A: 3} and got.weights.read_bytes() == b"first"
    # crash after the weights, before the pointer is renamed: still the old snapshot

    def boom(*a, **k):
        raise OSError(5, "I/O error")
    monkeypatch.setattr(snap, "atomic_write_bytes", boom)
    with pytest.raises(OSError):
        snap.write_snapshot(d, FakeReplica(b"third"), {A: 7})
    monkeypatch.undo()
    got = snap.read_snapshot(d)
    assert got.vv == {A: 3} and got.weights.read_bytes() == b"first"
    # the next successful snapshot cleans orphans
    snap.write_snapshot(d, FakeReplica(b"fourth"), {A: 9})
    assert sorted(p.name for p in d.iterdir() if p.name.startswith("weights")) == [snap.read_snapshot(d).weights.name]
    assert not list(d.glob(".*tmp*"))


def test_snapshot_pointer_errors(tmp_path):
    d = tmp_path / "snaps"
    assert snap.read_snapshot(d) is None
    d.mkdir()
    (d / "snapshot.json").write_text(json.dumps({"format": 1, "weights": "gone.safetensors", "vv": {}, "digest": "x"}))
    with pytest.raises(StateError, match="missing weights"):
        snap.read_snapshot(d)
    (d / "snapshot.json").write_text("{")
    with pytest.raises(StateError, match="malformed"):
        snap.read_snapshot(d)


# --- status socket -----------------------------------------------------------------------

async def test_status_socket_round_trip(tmp_path):
    path = tmp_path / "s.sock"

    async def handler(req):
        return {"ok": True, "echo": req["cmd"]}
    srv = StatusServer(path, handler)
    await srv.start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        ans = await asyncio.to_thread(request, path, {"cmd": "status"})
        assert ans == {"ok": True, "echo": "status"}
        r, w = await asyncio.open_unix_connection(str(path))
        w.write(b"not json\n{\"cmd\": \"digest\"}\n")
        await w.drain()
        assert json.loads(await r.readline())["ok"] is False
        assert json.loads(await r.readline())["echo"] == "digest"
        w.close()
    finally:
        await srv.close()
    assert not path.exists()
    with pytest.raises(DaemonUnreachable, match="does not exist"):
        request(path, {"cmd": "status"})


def test_genesis_without_record_fields_gets_the_documented_defaults():
    """A genesis that leaves out the swarm-wide protocol fields means exactly the defaults
    docs/config.md documents, which are ProtocolConfig's own (one source of truth)."""
    import re
    from pathlib import Path

    from onebyte.node.genesis import GENESIS_PROTOCOL_FIELDS, SWARM_DEFAULTS, parse_genesis, protocol_config
    from onebyte.protocol import ProtocolConfig
    doc = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
    g = parse_genesis({"swarm": {"base_model": "tiny", "base_model_hash": "0" * 64}, "hyper": {}, "task": {}})
    cfg = protocol_config(g, {})
    bare = ProtocolConfig(swarm_id=b"\0" * 32)
    for field in ("max_updates_per_s_per_origin", "updates_per_record", "record_linger_s"):
        documented = re.search(rf"\| swarm\.{field} \|[^|]*\| `([^`]+)`", doc).group(1)
        assert getattr(cfg, field) == SWARM_DEFAULTS[field] == getattr(bare, field) == type(getattr(cfg, field))(documented)
    assert {f: getattr(cfg, f) for f in GENESIS_PROTOCOL_FIELDS} == {f: SWARM_DEFAULTS[f] for f in GENESIS_PROTOCOL_FIELDS}