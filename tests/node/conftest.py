"""Fixtures for node tests (helpers live in node_harness.py, importable from here)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from node_harness import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def genesis_path(tmp_path_factory) -> Path:
    """A genesis for the tiny model and the built-in task, written by `onebyte init`."""
    root = tmp_path_factory.mktemp("genesis")
    path = root / "genesis.toml"
    r = run_cli("init", "--model", "tiny", "--data", "builtin:sentiment", "--name", "test",
                "--out", path, "--hyper", "lr=0.0001", "--record-linger", "0.1", "--updates-per-record", "8",
                "--max-rate", "200")
    assert r.returncode == 0, r.stderr
    return path


