"""A closed-swarm genesis may only list keys the signature rule accepts (docs/security.md)."""

from __future__ import annotations

import pytest

from node_harness import Node, run_cli
from onebyte.node.errors import ConfigError
from onebyte.node.genesis import dump_toml, parse_genesis
from onebyte.protocol import Identity

HASH = "0" * 64
IDENTITY_POINT = "01" + "00" * 31                                             # order 1
ORDER_8 = "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"  # order 8
Y_IS_P = "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"  # y = p: non-canonical


def closed(*members: str) -> dict:
    return {"swarm": {"base_model": "tiny", "base_model_hash": HASH, "admission": "closed",
                      "members": list(members)}, "hyper": {}, "task": {}}


@pytest.mark.parametrize("bad, reason", [(IDENTITY_POINT, "small order"), (ORDER_8, "small order"),
                                         (Y_IS_P, "non canonical")])
def test_genesis_refuses_a_bad_member_key(bad, reason):
    good = Identity.from_seed(1).public_bytes().hex()
    parse_genesis(closed(good))                                # an honest key is fine
    with pytest.raises(ConfigError, match=rf"members\[1\] = {bad} is not an acceptable Ed25519 public key "
                                          rf"\({reason}\)") as exc:
        parse_genesis(closed(good, bad))
    assert "\n" not in str(exc.value)


def test_run_with_such_a_genesis_is_one_clear_line(tmp_path):
    g = closed(Identity.from_seed(1).public_bytes().hex(), ORDER_8)
    path = tmp_path / "genesis.toml"
    path.write_text(dump_toml(g))
    n = Node(tmp_path, "n", path, [])
    r = run_cli("run", "--config", n.config)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "small order" in r.stderr and "members[1]" in r.stderr, r.stderr


def test_an_open_swarm_asking_for_admission_work(tmp_path):
    """init --admission-work-bits; keygen --genesis finds a key with the work; a plain key is a
    clear one-line refusal in check-config (exit 2; run checks the same way), never a silent
    lonely node."""
    from onebyte.node.genesis import load_genesis
    from onebyte.node.keys import read_key
    from onebyte.protocol.identity import key_work
    genesis = tmp_path / "genesis.toml"
    r = run_cli("init", "--model", "tiny", "--out", genesis, "--admission-work-bits", "10")
    assert r.returncode == 0, r.stderr
    sid = load_genesis(genesis).swarm_id
    r = run_cli("keygen", "--genesis", genesis, "--out", tmp_path / "worked.key")
    assert r.returncode == 0 and "bits of admission work" in r.stdout, r.stdout + r.stderr
    assert key_work(sid, Identity.from_private_bytes(read_key(tmp_path / "worked.key")).public_bytes()) >= 10
    node = Node(tmp_path, "plain", genesis, [])
    while key_work(sid, Identity.from_private_bytes(read_key(node.key)).public_bytes()) >= 10:
        node.key.unlink()   # one in 1,024 plain keys carries the work by chance: make another
        from onebyte.node.keys import write_key
        write_key(node.key)
    r = run_cli("check-config", "--config", node.config)
    assert r.returncode == 2 and "of the 10 bits of admission work" in r.stderr, r.stdout + r.stderr
    node.fields["key"] = str(tmp_path / "worked.key")
    node.write_config()
    r = run_cli("check-config", "--config", node.config)
    assert r.returncode == 0, r.stdout + r.stderr
