"""`onebyte doctor` against real daemons on loopback: a healthy pair passes (its UDP probe is
counted by the node, its TCP snapshot port answers); a peer of another genesis, a node alone
with a silent bootstrap peer, and a stopped daemon are each named with the fix, exit 1 where
something fails."""
from __future__ import annotations

import json

import pytest

from node_harness import Node, run_cli, wait_for

COMMON = dict(step_interval_s=0.05, threads=1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor")
    genesis, other = root / "genesis.toml", root / "other.toml"
    assert run_cli("init", "--model", "tiny", "--out", genesis, "--record-linger", "0.1").returncode == 0
    assert run_cli("init", "--model", "tiny", "--out", other, "--name", "other").returncode == 0
    a = Node(root, "a", genesis, [], max_steps=30, **COMMON).start()
    nodes = [a]
    try:
        a.wait_ready()
        nodes.append(Node(root, "b", genesis, [a.addr], max_steps=30, **COMMON).start())
        nodes.append(Node(root, "stranger", other, [a.addr], max_steps=5, **COMMON).start())
        lonely = Node(root, "lonely", genesis, ["127.0.0.1:9"], max_steps=5, **COMMON).start()
        nodes.append(lonely)
        for n in nodes:
            n.wait_ready()
        yield root, a, lonely
    finally:
        for n in nodes:
            n.cleanup()


def test_a_healthy_node_passes_and_a_foreign_peer_is_named(pair):
    root, a, _ = pair
    wait_for(lambda: a.status()["peers_alive"] >= 1 and a.status()["drops"].get("wrong_swarm"), 60,
             "a to see b alive and the stranger's datagrams")
    r = run_cli("doctor", "--config", a.config)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for line in ("ok    config", "ok    daemon", "ok    peers      1 alive", "ok    udp", "ok    tcp", "healthy"):
        assert line in out, out
    assert "wrong_swarm" in out and "runs another genesis" in out
    js = json.loads(run_cli("doctor", "--json", "--config", a.config).stdout)
    assert js["healthy"] and {c["name"] for c in js["checks"]} >= {"udp", "tcp", "nat", "disk"}


def test_a_lonely_node_and_a_stopped_one_fail_with_the_fix(pair):
    root, a, lonely = pair
    wait_for(lambda: lonely.status()["bootstrap_silent"], 90, "the lonely node to warn about its silent peer")
    r = run_cli("doctor", "--config", lonely.config)
    assert r.returncode == 1 and "FAIL  peers      no peer alive" in r.stdout, r.stdout
    assert "warn  bootstrap  peer 127.0.0.1:9" in r.stdout and "NOT healthy" in r.stdout
    lonely.terminate()
    r = run_cli("doctor", "--config", lonely.config)
    assert r.returncode == 1 and "FAIL  daemon" in r.stdout and "journalctl" in r.stdout, r.stdout
