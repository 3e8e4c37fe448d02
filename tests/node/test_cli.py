"""User mistakes through the real CLI: one clear line on stderr, non-zero exit, no traceback."""

from __future__ import annotations

import re
import socket

import pytest

from node_harness import Node, run_cli, wait_for


def one_error_line(r, pattern: str, code: int | None = None):
    assert r.returncode != 0
    if code is not None:
        assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("onebyte: error:")]
    assert len(lines) == 1, r.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_help_for_every_command():
    for cmd in ("init", "keygen", "pubkey", "run", "status", "stop-producing", "export", "digest"):
        r = run_cli(cmd, "--help")
        assert r.returncode == 0 and "usage: onebyte" in r.stdout, r.stderr


def test_bad_config(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\ngenesis = "g.toml"\nkey = "k"\nstate_dir = "s"\nlisten = "localhost"\n')
    one_error_line(run_cli("run", "--config", cfg), r"\[node\] listen: expected", 2)
    one_error_line(run_cli("run", "--config", tmp_path / "missing.toml"), r"not found", 2)


def test_missing_model_file(tmp_path, genesis_path):
    n = Node(tmp_path, "m", genesis_path, [], model=str(tmp_path / "nope.gguf"))
    one_error_line(run_cli("run", "--config", n.config), r"model: GGUF file not found", 2)


def test_wrong_genesis(tmp_path, genesis_path):
    # a genesis whose base model hash does not match the model
    bad = tmp_path / "bad-genesis.toml"
    bad.write_text(genesis_path.read_text().replace('base_model = "tiny"', 'base_model = "tiny:1"'))
    n = Node(tmp_path, "w", bad, [])
    one_error_line(run_cli("run", "--config", n.config), r"wrong genesis: model 'tiny:1' has hash", 2)
    # a state dir that belongs to another swarm
    other = tmp_path / "other-genesis.toml"
    other.write_text(genesis_path.read_text().replace('name = "test"', 'name = "other"'))
    assert not (n.state_dir / "genesis.toml").exists()  # a failed start pins nothing
    n.state_dir.mkdir(parents=True, exist_ok=True)
    (n.state_dir / "genesis.toml").write_text(other.read_text())
    n.fields["genesis"] = str(genesis_path)
    n.write_config()
    one_error_line(run_cli("run", "--config", n.config), r"wrong genesis: state_dir .* belongs to swarm", 3)
    # not a genesis at all
    junk = tmp_path / "junk.toml"
    junk.write_text("[swarm]\nname = 1\n")
    n.fields["genesis"] = str(junk)
    n.write_config()
    one_error_line(run_cli("run", "--config", n.config), r"genesis .*junk.toml", 2)


def test_unreadable_key(tmp_path, genesis_path):
    n = Node(tmp_path, "k", genesis_path, [])
    n.key.write_text("not a key\n")
    one_error_line(run_cli("run", "--config", n.config), r"key file .* is malformed", 2)
    n.fields["key"] = str(tmp_path)  # a directory
    n.write_config()
    one_error_line(run_cli("run", "--config", n.config), r"key file .* cannot be read", 2)


def test_port_in_use(tmp_path, genesis_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        n = Node(tmp_path, "p", genesis_path, [], )
        n.fields["listen"] = f"127.0.0.1:{s.getsockname()[1]}"
        n.write_config()
        one_error_line(run_cli("run", "--config", n.config), r"listen .* cannot bind", 2)


def test_status_without_daemon(tmp_path, genesis_path):
    n = Node(tmp_path, "s", genesis_path, [])
    one_error_line(run_cli("status", "--config", n.config), r"no daemon", 4)


def test_top_with_a_count_fails_when_no_daemon_answers(tmp_path):
    r = run_cli("top", "--socket", str(tmp_path / "missing.sock"), "--count", "1", "--interval", "0.1")
    assert r.returncode == 4 and "no daemon answers" in r.stderr and "Traceback" not in r.stderr


def test_check_config_validates_without_starting(tmp_path, genesis_path):
    n = Node(tmp_path, "c", genesis_path, [])
    r = run_cli("check-config", "--config", n.config)
    assert r.returncode == 0, r.stderr
    assert "config is valid" in r.stdout and "will be created" in r.stdout
    assert not n.state_dir.exists()                       # nothing started, nothing written
    n.fields["data"] = str(tmp_path / "missing.tsv")
    n.write_config()
    one_error_line(run_cli("check-config", "--config", n.config), r"data .*missing.tsv does not exist", 2)
    n.fields["data"] = ""
    n.fields["key"] = str(tmp_path / "nokey")
    n.write_config()
    one_error_line(run_cli("check-config", "--config", n.config), r"key", 2)


def test_eval_scores_the_state_dir_and_a_snapshot_offline(tmp_path, genesis_path):
    import json
    n = Node(tmp_path, "e", genesis_path, [], max_steps=8, threads=1).start()
    try:
        n.wait_ready()
        wait_for(lambda: n.status()["worker_state"] == "done", 120, "8 own steps")
        assert n.terminate() == 0
    finally:
        n.cleanup()
    r = run_cli("eval", "--config", n.config, "--data", "builtin:sentiment", "--n", "64", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    digest = json.loads(run_cli("digest", "--config", n.config, "--offline", "--json").stdout)["digest"]
    assert got["n"] == 64 and 0.0 <= got["accuracy"] <= 1.0 and got["digest"] == digest
    snap = sorted((n.state_dir / "snapshots").glob("*.safetensors"))[-1]
    r = run_cli("eval", "--config", n.config, "--data", "builtin:sentiment", "--n", "64", "--json",
                "--snapshot", snap)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["digest"] == digest          # the final snapshot holds every update
    r = run_cli("eval", "--config", n.config, "--data", "builtin:sentiment", "--n", "64", "--json", "--base")
    assert r.returncode == 0, r.stderr
    base = json.loads(r.stdout)
    assert base["source"] == "base" and base["digest"] != digest and base["n"] == 64
    one_error_line(run_cli("eval", "--config", n.config, "--data", str(tmp_path / "none.tsv")), r"data", 2)
    # an exported folder scores as the state dir it came from, and --record puts it in its card
    out = tmp_path / "exported"
    assert run_cli("export", "--config", n.config, "--out", out, "--offline", "--dataset", "stanfordnlp/sst2").returncode == 0
    r = run_cli("eval", "--model", out, "--data", "builtin:sentiment", "--n", "64", "--json", "--record")
    assert r.returncode == 0, r.stderr
    scored = json.loads(r.stdout)
    assert scored["digest"] == digest and scored["accuracy"] == got["accuracy"]
    assert scored["loss"] == pytest.approx(got["loss"], rel=1e-6)
    card = (out / "README.md").read_text()
    assert "model-index:" in card and '- "stanfordnlp/sst2"' in card
    one_error_line(run_cli("eval", "--model", tmp_path, "--data", "builtin:sentiment"), r"no onebyte.json", 2)
    one_error_line(run_cli("eval", "--config", n.config, "--record"), r"--record", 2)


def test_init_and_keygen(tmp_path):
    g = tmp_path / "g.toml"
    r = run_cli("init", "--out", g, "--model", "tiny")
    assert r.returncode == 0 and re.search(r"swarm id [0-9a-f]{64}", r.stdout), r.stderr
    one_error_line(run_cli("init", "--out", g), r"exists; pass --force", 2)
    one_error_line(run_cli("init", "--out", tmp_path / "h.toml", "--model", tmp_path / "x.gguf"), r"GGUF file not found", 2)
    one_error_line(run_cli("init", "--out", tmp_path / "h.toml", "--hyper", "eps=-1"), r"eps", 2)
    k = tmp_path / "n.key"
    r = run_cli("keygen", "--out", k)
    assert r.returncode == 0 and "node id" in r.stdout
    one_error_line(run_cli("keygen", "--out", k), r"already exists", 2)


def test_init_names_the_scope_of_a_sharded_qwen2_folder_by_its_layer_list(tmp_path):
    """A local transformers folder in safetensors shards, of another architecture: `init --scope`
    reads its layer list from the config (no weights loaded) and pins the folder's hash."""
    import transformers

    from onebyte.model.load import TINY_CONFIG, load_model
    from onebyte.node.genesis import load_genesis
    _, tok = load_model("tiny")
    torch_model = transformers.AutoModelForCausalLM.from_config(
        transformers.Qwen2Config(vocab_size=len(tok), **dict(TINY_CONFIG, num_hidden_layers=3)))
    folder = tmp_path / "qwen2"
    torch_model.save_pretrained(folder, max_shard_size="30KB", safe_serialization=True)
    tok.save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) > 1
    for scope, key, want in (("top1", "trainable", r"model\.layers\.(2)\..*|model\.norm\.weight"),
                             ("lora-top2", "lora_targets", r"model\.layers\.(1|2)\.(self_attn|mlp)\.[a-z_]+_proj")):
        r = run_cli("init", "--model", folder, "--scope", scope, "--out", tmp_path / f"{scope}.toml")
        assert r.returncode == 0, r.stderr
        assert load_genesis(tmp_path / f"{scope}.toml").hyper[key] == want
    r = run_cli("init", "--model", folder, "--scope", "top4", "--out", tmp_path / "bad.toml")
    assert r.returncode == 2 and "has 3 layers" in r.stderr


def test_init_scope_presets_are_part_of_the_swarm_id(tmp_path):
    from onebyte.node.genesis import load_genesis
    ids = {}
    for scope in ("norm", "top1", "lora-top1"):
        r = run_cli("init", "--model", "tiny", "--scope", scope, "--out", tmp_path / f"{scope}.toml")
        assert r.returncode == 0, r.stderr
        g = load_genesis(tmp_path / f"{scope}.toml")
        ids[scope] = g.swarm_id
        g.make_hyper()  # a valid Hyper
    assert len(set(ids.values())) == 3
    lora = load_genesis(tmp_path / "lora-top1.toml").hyper
    assert lora["lora_rank"] == 16 and "lora_" in lora["trainable"] and "layers\\.(1)" in lora["lora_targets"]
    r = run_cli("init", "--model", "tiny", "--scope", "top3", "--out", tmp_path / "bad.toml")
    assert r.returncode == 2 and "has 2 layers" in r.stderr and r.stderr.count("\n") == 1
    from onebyte.node.keys import public_of, read_key, write_key
    members = []
    for name in ("m1.key", "m2.key"):   # real keys: a genesis refuses keys that are not curve points
        write_key(tmp_path / name)
        members += ["--member", public_of(read_key(tmp_path / name)).hex()]
    r = run_cli("init", "--model", "tiny", "--admission", "closed", *members, "--out", tmp_path / "closed.toml")
    assert r.returncode == 0 and load_genesis(tmp_path / "closed.toml").hyper["swarm_nodes"] == 2


def test_pubkey_and_stop_producing(tmp_path, genesis_path):
    r = run_cli("keygen", "--out", tmp_path / "k.key")
    assert r.returncode == 0
    shown = run_cli("pubkey", tmp_path / "k.key")
    assert shown.returncode == 0 and shown.stdout.strip() == "\n".join(r.stdout.strip().splitlines()[1:])
    bad = run_cli("pubkey", tmp_path / "missing.key")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    n = Node(tmp_path, "p", genesis_path, [], step_interval_s=0.2)
    try:
        n.start().wait_ready()
        r = run_cli("stop-producing", "--socket", n.socket)
        assert r.returncode == 0 and "stopped producing" in r.stdout, r.stderr
        assert n.status()["worker_state"] == "done"
        assert n.terminate() == 0
    finally:
        n.cleanup()


def test_output_piped_to_a_closed_reader_is_not_an_error(tmp_path):
    """`onebyte status | head -5`: the reader may be gone before the output is written (`true`
    exits at once, long before the CLI has imported what it needs): no traceback."""
    import subprocess
    import sys
    cmd = f"{sys.executable} -m onebyte.node.client.cli init --model tiny --out {tmp_path / 'g.toml'} | true"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


def test_init_refuses_what_a_node_would_refuse(tmp_path):
    """A genesis is immutable: init must not write one that names a missing data file or that
    `onebyte run` would reject."""
    for args, needle in ((["--data", str(tmp_path / "missing.tsv")], "no such file"),
                         (["--eval-data", str(tmp_path / "nope.jsonl")], "no such file"),
                         (["--updates-per-record", "0"], "updates_per_record must be in 1..256")):
        r = run_cli("init", "--model", "tiny", "--out", tmp_path / "g.toml", *args)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not (tmp_path / "g.toml").exists()
    rows = tmp_path / "rows.tsv"
    rows.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    r = run_cli("init", "--model", "tiny", "--data", rows, "--out", tmp_path / "g.toml")
    assert r.returncode == 0 and "no --eval-data" in r.stderr   # nodes do not score on training rows
    import tomllib
    assert tomllib.loads((tmp_path / "g.toml").read_text())["task"]["eval_data"] == ""


def test_genesis_paths_are_relative_to_the_genesis_file(tmp_path):
    from onebyte.node.genesis import load_genesis
    from onebyte.node.train.training import task_sources
    folder = tmp_path / "swarm"
    folder.mkdir()
    (folder / "rows.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    r = run_cli("init", "--model", "tiny", "--data", folder / "rows.tsv", "--eval-data", folder / "rows.tsv",
                "--out", folder / "genesis.toml")
    assert r.returncode == 0, r.stderr
    text = (folder / "genesis.toml").read_text().replace(str(folder / "rows.tsv"), "rows.tsv")
    (folder / "genesis.toml").write_text(text)     # a genesis that names its data relatively
    g = load_genesis(folder / "genesis.toml")
    _, train, ev = task_sources(g.task, genesis_dir=g.path.parent)
    assert train == ev == str(folder / "rows.tsv")
    _, train, _ = task_sources(g.task, data="/elsewhere.tsv", genesis_dir=g.path.parent)
    assert train == "/elsewhere.tsv"   # the node's own data wins, as it names it
    assert g.base_model_spec() == "tiny"
    g2 = load_genesis(folder / "genesis.toml")
    object.__setattr__(g2, "swarm", dict(g2.swarm, base_model="models/m.gguf"))
    assert g2.base_model_spec() == str(folder / "models" / "m.gguf")
