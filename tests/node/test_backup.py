"""`onebyte backup`: a running node's key, config, genesis, log and a snapshot of its weights
now, as a state dir a restored node starts from with the same weights; --offline for a stopped
node; a non-empty --out is refused."""
from __future__ import annotations

import json
import os
import shutil

from node_harness import Node, run_cli, wait_for

STEPS = 40


def test_backup_of_a_running_node_restores_to_the_same_weights(tmp_path):
    genesis = tmp_path / "genesis.toml"
    assert run_cli("init", "--model", "tiny", "--out", genesis, "--record-linger", "0.1").returncode == 0
    node = Node(tmp_path, "a", genesis, [], max_steps=STEPS, step_interval_s=0.02, snapshot_every=15,
                threads=1).start()
    try:
        node.wait_ready()
        wait_for(lambda: node.status()["worker_state"] == "done", 120, "the node to finish its steps")
        live = node.digest()["digest"]
        out = tmp_path / "bk"
        r = run_cli("backup", "--config", node.config, "--out", out)
        assert r.returncode == 0, r.stderr
        assert "snapshot of 40 updates" in r.stdout, r.stdout
        rec = json.loads((out / "BACKUP.json").read_text())
        assert rec["source"] == "daemon" and rec["snapshot"]["digest"] == live
        assert oct((out / "node.key").stat().st_mode & 0o777) == "0o600"
        assert {p.name for p in (out / "state").iterdir()} >= {"updates.log", "snapshots", "genesis.toml"}
        r = run_cli("backup", "--config", node.config, "--out", out)
        assert r.returncode == 2 and "not empty" in r.stderr
    finally:
        node.terminate()
    # Restore elsewhere: the backup's state dir and key under a config that points at them.
    restored = Node(tmp_path, "restored", genesis, [], max_steps=STEPS, threads=1)
    shutil.rmtree(restored.state_dir, ignore_errors=True)
    shutil.copytree(out / "state", restored.state_dir)
    os.replace(out / "node.key", restored.key)
    r = run_cli("digest", "--offline", "--config", restored.config)
    assert r.returncode == 0 and r.stdout.strip() == live, r.stdout + r.stderr
    r = run_cli("backup", "--offline", "--config", restored.config, "--out", tmp_path / "bk2")
    assert r.returncode == 0 and "snapshot of 40 updates" in r.stdout, r.stdout + r.stderr
