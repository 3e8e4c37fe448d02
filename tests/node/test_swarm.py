"""End to end: real daemons on loopback fine-tune together, survive SIGKILL, absorb a late
joiner and a garbage flood, leave gracefully, and export a model transformers can load.
Node c holds its frozen base in bf16 (`dtype = "bf16"`) and produces under autocast while
the others run fp32: every convergence below compares its digest with theirs.

The tests in this module share one swarm and run in order (each builds on the last).
"""

from __future__ import annotations

import random
import socket
import threading

import pytest

from onebyte.node.ops.status import request

from node_harness import CONVERGE_TIMEOUT, Node, run_cli, union_digest, wait_for

pytestmark = pytest.mark.slow

STEPS = {"a": 30, "b": 60, "c": 30, "d": 10, "e": 5}
COMMON = dict(step_interval_s=0.05, snapshot_every=25, threads=1)


def converged(nodes, expected_updates):
    """All nodes hold `expected_updates` updates, nothing pending, and equal digests."""
    sts = [n.status() for n in nodes]
    if any(s["version_vector"]["updates"] != expected_updates or s["replay_backlog"] for s in sts):
        return None
    digests = {n.digest()["digest"] for n in nodes}
    return digests.pop() if len(digests) == 1 else None


@pytest.fixture(scope="module")
def swarm(tmp_path_factory, genesis_path):
    root = tmp_path_factory.mktemp("swarm")
    nodes: dict[str, Node] = {}
    try:
        a = nodes["a"] = Node(root, "a", genesis_path, [], max_steps=STEPS["a"], **COMMON).start()
        a.wait_ready()
        for name in ("b", "c"):
            nodes[name] = Node(root, name, genesis_path, [a.addr], max_steps=STEPS[name],
                               dtype="bf16" if name == "c" else "fp32", **COMMON).start()
        yield root, nodes
    finally:
        for n in nodes.values():
            n.cleanup()


def test_three_nodes_converge_with_a_sigkill_and_match_union_replay(swarm, genesis_path):
    root, nodes = swarm
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    b.wait_ready()
    c.wait_ready()
    # SIGKILL b in the middle of its run, then restart it on the same state dir.
    wait_for(lambda: b.status()["own_steps"] >= 8, 120, "b to take 8 own steps", 0.02)
    b.kill()
    b.start()
    st = b.wait_ready()
    assert st["own_steps"] >= 8            # nothing it had logged was lost
    assert st["restored"]["from_snapshot"] + st["restored"]["replayed_from_log"] >= 8
    total = sum(STEPS[n] for n in "abc")
    digest = wait_for(lambda: converged([a, b, c], total), CONVERGE_TIMEOUT, "a, b, c to converge", 0.5)
    for n in (a, b, c):
        vv = n.status()["version_vector"]["by_origin"]
        assert sorted(vv.values()) == sorted(STEPS[x] for x in "abc"), vv
    expect, count = union_digest([n.state_dir for n in (a, b, c)], genesis_path)
    assert count == total
    assert "frozen base in bf16" in c.stderr() and "frozen base in fp32" in a.stderr()
    assert digest == expect     # every update applied exactly once, restart included


def test_garbage_flood_changes_nothing_and_is_counted(swarm):
    _, nodes = swarm
    a = nodes["a"]
    before = a.status()
    digest = a.digest()["digest"]
    host, port = a.addr.rsplit(":", 1)
    rng = random.Random(7)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for burst in range(6):   # bursts small enough for the socket buffer: counted, not lost
            for _ in range(50):
                s.sendto(rng.randbytes(rng.randrange(0, 300)), (host, int(port)))
                sent += 1
            want = before["drops_total"] + sent
            wait_for(lambda: a.status()["drops_total"] >= want, 60, f"{want} drops")
    after = a.status()
    assert after["drops_total"] - before["drops_total"] >= sent
    assert after["datagrams_in"] - before["datagrams_in"] >= sent
    assert after["version_vector"] == before["version_vector"]
    assert a.digest()["digest"] == digest
    assert after["worker_state"] == before["worker_state"]


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET, drained by a thread as systemd would."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[bytes] = []
        self._run = True
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self):
        while self._run:
            try:
                self.messages.append(self.sock.recv(4096))
            except (socket.timeout, OSError):
                continue

    def wait_for(self, prefix: bytes) -> list[bytes]:
        wait_for(lambda: any(m.startswith(prefix) for m in self.messages), 60, f"sd_notify {prefix!r}")
        return list(self.messages)

    def close(self):
        self._run = False
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def notify_socket(tmp_path_factory):
    fake = FakeSystemd(tmp_path_factory.mktemp("notify") / "notify.sock")
    yield fake
    fake.close()


def test_late_joiner_reaches_the_same_digest(swarm, genesis_path, notify_socket):
    root, nodes = swarm
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    # d runs as under systemd: Type=notify with a 0.4 s watchdog (pinged every 0.2 s).
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"}
    d = nodes["d"] = Node(root, "d", genesis_path, [c.addr], env=env, max_steps=STEPS["d"], **COMMON).start()
    # e joins from a snapshot of a (taken through the status socket) instead of the base model.
    snap = request(a.socket, {"cmd": "snapshot", "path": str(root / "a-snap.safetensors")}, timeout=60)
    assert snap["ok"], snap
    # e also runs with a tiny replay backlog bound, so it joins under back-pressure
    e = nodes["e"] = Node(root, "e", genesis_path, [b.addr], max_steps=STEPS["e"], max_backlog=3,
                          initial_snapshot=snap["path"], **COMMON).start()
    d.wait_ready()
    msgs = notify_socket.wait_for(b"WATCHDOG=1")
    ready = [i for i, m in enumerate(msgs) if m.startswith(b"READY=1\nSTATUS=serving on 127.0.0.1:")]
    assert ready and ready[0] < msgs.index(b"WATCHDOG=1"), msgs
    e.wait_ready()
    total = sum(STEPS.values())
    digest = wait_for(lambda: converged([a, b, c, d, e], total), CONVERGE_TIMEOUT, "all five to converge", 0.5)
    expect, _ = union_digest([n.state_dir for n in (a, b, c, d, e)], genesis_path)
    assert digest == expect
    st = d.status()
    assert st["applied_replayed"] == total - STEPS["d"]
    assert st["replay_calls"] < st["applied_replayed"]     # the backlog was replayed fused
    st = e.status()
    assert st["restored"]["from_snapshot"] == snap["updates"] > 0
    assert st["applied_replayed"] == total - STEPS["e"] - snap["updates"]   # the snapshot's were skipped


def test_export_loads_with_plain_transformers(swarm, tmp_path):
    _, nodes = swarm
    a = nodes["a"]
    out = tmp_path / "export"
    r = run_cli("export", "--config", a.config, "--out", out)
    assert r.returncode == 0, r.stderr
    import json

    import torch
    from transformers import AutoModelForCausalLM
    meta = json.loads((out / "onebyte.json").read_text())
    assert meta["digest"] == a.digest()["digest"] and meta["source"] == "daemon"
    # how to use it travels with it: the prompt and label words, a model card, readable files
    assert meta["task"]["template"] == "{text} Label:" and meta["task"]["verbalizer"] == [" A", " B"]
    card = (out / "README.md").read_text()
    assert "Label:" in card and "' A'" in card and meta["digest"] in card
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir() if p.is_file())
    model = AutoModelForCausalLM.from_pretrained(out)
    from onebyte.model.load import load_model
    base, _ = load_model("tiny")
    changed = [n for n, p in model.state_dict().items()
               if not torch.equal(p, base.state_dict()[n])]
    assert changed, "the export must hold fine-tuned weights, not the base"
    # Replica's digest covers the int64 state (weights in quanta of the grid, name order):
    # recompute it from the export's fp32 weights (exact: these weights are far below 2**24 quanta).
    import hashlib

    from onebyte.model import Replica
    from onebyte.node.genesis import load_genesis
    grid = Replica(base, load_genesis(a.state_dir / "genesis.toml").make_hyper()).grid
    h = hashlib.blake2b(digest_size=32)
    params = dict(model.named_parameters())
    for name, q in zip(grid.names, grid.quantum.tolist()):
        k = params[name].detach().double() / q
        assert torch.equal(k, k.round()) and k.abs().max() < 2 ** 24
        h.update(k.long().contiguous().numpy().astype("<i8").tobytes())
    assert h.hexdigest() == meta["digest"]


def test_sigterm_is_a_graceful_leave_and_offline_digest_matches(swarm, notify_socket):
    _, nodes = swarm
    a, d = nodes["a"], nodes["d"]
    digest = d.digest()["digest"]
    d_id = d.status()["node_id"]
    assert d.terminate() == 0
    assert "Traceback" not in d.stderr()
    notify_socket.wait_for(b"STOPPING=1")
    # Peers learn of a graceful leave at once ("left"), not by suspicion ("suspect" -> "dead").
    wait_for(lambda: any(p["node_id"] == d_id and p["state"] == "left" for p in a.status()["peers"]),
             30, "a to see d as left")
    r = run_cli("digest", "--config", d.config, "--offline")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == digest
