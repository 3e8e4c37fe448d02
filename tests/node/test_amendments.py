"""Membership amendments with real daemons (docs/operations.md, "Changing the members"): a
closed swarm whose genesis names an authority admits a new key, revokes a member from a step
(its later steps taken back everywhere) and rotates a member to a new key, all while training,
through `onebyte admit | revoke | rotate`; no honest restart, digests identical, the
amendments kept across a restart."""
from __future__ import annotations

import pytest

from byzantine_peer import settled_excluding
from node_harness import CONVERGE_TIMEOUT, Node, run_cli, wait_for

COMMON = dict(step_interval_s=0.05, snapshot_every=25, threads=1)
STEPS = 400   # own steps per node: still producing while the amendments go through


def pub_of(path) -> str:
    from onebyte.node.keys import read_key
    from onebyte.protocol import Identity
    return Identity.from_private_bytes(read_key(path)).public_bytes().hex()


def node_id_of(path) -> str:
    from onebyte.node.keys import read_key
    from onebyte.protocol import Identity
    return Identity.from_private_bytes(read_key(path)).node_id.hex()


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    from onebyte.node.keys import write_key
    root = tmp_path_factory.mktemp("amend")
    keys = {}
    for name in ("a", "b", "c", "d", "b2", "auth"):
        (root / name).mkdir()
        keys[name] = root / name / "node.key"
        write_key(keys[name])
    genesis = root / "genesis.toml"
    args = ["init", "--model", "tiny", "--data", "builtin:sentiment", "--out", genesis, "--hyper", "lr=0.0001",
            "--record-linger", "0.1", "--updates-per-record", "8", "--max-rate", "200", "--admission", "closed",
            "--authority", pub_of(keys["auth"])]
    for m in ("a", "b", "c"):
        args += ["--member", pub_of(keys[m])]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    nodes = {"a": Node(root, "a", genesis, [], max_steps=STEPS, **COMMON).start()}
    try:
        nodes["a"].wait_ready()
        for name in ("b", "c", "d"):
            nodes[name] = Node(root, name, genesis, [nodes["a"].addr], max_steps=STEPS, **COMMON).start()
        for n in nodes.values():
            n.wait_ready()
        yield root, genesis, keys, nodes
    finally:
        for n in nodes.values():
            n.cleanup()


def steps_of(node, key) -> int:
    return node.status()["version_vector"]["by_origin"].get(node_id_of(key), 0)


def test_admit_revoke_rotate_while_training(swarm):
    root, genesis, keys, nodes = swarm
    a, b, c, d = (nodes[n] for n in "abcd")
    wait_for(lambda: steps_of(a, keys["c"]) >= 20, CONVERGE_TIMEOUT, "a to hold c's first steps")
    assert steps_of(a, keys["d"]) == 0                     # d is not a member yet: refused
    auth = ["--authority-key", keys["auth"]]

    r = run_cli("admit", pub_of(keys["d"]), *auth, "--config", a.config)
    assert r.returncode == 0 and "#1 admit" in r.stdout and "in effect" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: all(steps_of(n, keys["d"]) >= 10 for n in (a, b, c)), CONVERGE_TIMEOUT,
             "every member to take the admitted node's updates")

    cut = steps_of(b, keys["c"]) - 5                      # some of c's applied steps come back out
    r = run_cli("revoke", pub_of(keys["c"]), "--from-step", cut, *auth, "--config", b.config)
    assert r.returncode == 0 and f"#2 revoke {pub_of(keys['c'])} from step {cut}" in r.stdout, r.stdout + r.stderr

    # Rotation: b's operator stops b, signs the link with both keys, starts b2 under the new key.
    assert b.terminate() == 0
    r = run_cli("rotate", "--old-key", keys["b"], "--new-key", keys["b2"], *auth, "--config", a.config)
    assert r.returncode == 0 and "#3 rotate" in r.stdout, r.stdout + r.stderr
    b2 = nodes["b2"] = Node(root, "b2", genesis, [a.addr], max_steps=STEPS, **COMMON).start()
    b2.wait_ready()
    wait_for(lambda: all(steps_of(n, keys["b2"]) >= 10 for n in (a, d)), CONVERGE_TIMEOUT,
             "the rotated member's new key to publish")

    honest = [a, d, b2]
    from onebyte.protocol import Identity
    from onebyte.node.keys import read_key
    c_id = Identity.from_private_bytes(read_key(keys["c"])).node_id
    digest = wait_for(lambda: settled_excluding(honest, c_id, cut, "revoked", STEPS), 2 * CONVERGE_TIMEOUT,
                      "a, d and b2 to finish with c revoked and the same weights", 0.5)
    for n in honest:
        st = n.status()
        assert st["excluded_origins"][node_id_of(keys["b"])]["reason"] == "rotated"
        assert n.proc.poll() is None and "membership amendment in effect" in n.stderr()
    assert "revoked by a membership amendment" in a.stderr()
    members = run_cli("members", "--config", a.config)
    assert "#1    admit" in members.stdout and "#3    rotate" in members.stdout, members.stdout
    assert "revoked" in members.stdout

    # A restart keeps the amendments: the same prefix, the same exclusions, the same weights.
    assert a.terminate() == 0
    a.start()
    a.wait_ready()
    st = a.status()
    assert st["excluded_origins"][c_id.hex()] == {"step": cut, "reason": "revoked"}
    assert a.digest()["digest"] == digest
    ans = run_cli("members", "--json", "--config", a.config)
    assert ans.returncode == 0


def test_refused_amendments_say_why(swarm):
    root, genesis, keys, nodes = swarm
    a = nodes["a"]
    r = run_cli("admit", pub_of(keys["d"]), "--authority-key", keys["a"], "--config", a.config)  # not the authority
    assert r.returncode == 2 and "0 valid authority signature(s), the genesis needs 1" in r.stderr, r.stderr
    r = run_cli("admit", "zz", "--authority-key", keys["auth"], "--config", a.config)
    assert r.returncode == 2 and "neither a public key" in r.stderr
    saved = root / "amend.hex"
    r = run_cli("admit", pub_of(keys["d"]), "--number", 9, "--save", saved, "--config", a.config)
    assert r.returncode == 0 and "0 signature(s)" in r.stdout
    r = run_cli("amend", saved, "--config", a.config)
    assert r.returncode == 2 and "needs the authority's signature" in r.stderr, r.stderr
