"""The daemon starts from a read-only install with no writable home, as the shipped systemd
unit runs it (ProtectSystem=strict, DynamicUser): numba's kernel cache must go elsewhere.

The checkout (and its .venv) is bind-mounted read-only in a private mount namespace that
this test creates (root only; skipped otherwise)."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node_harness import Node, run_cli, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare(1)")
def test_daemon_starts_from_a_read_only_install(tmp_path):
    genesis = tmp_path / "genesis.toml"
    assert run_cli("init", "--model", "tiny", "--out", genesis).returncode == 0
    node = Node(tmp_path, "ro", genesis, [], max_steps=3)
    onebyte = Path(sys.executable).with_name("onebyte")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "CACHE_DIRECTORY", "STATE_DIRECTORY")}
    env.pop("XDG_CACHE_HOME", None)
    env["HOME"] = str(ROOT / ".no-home")  # inside the read-only mount: nothing can be created there
    script = (f'mount --bind "{ROOT}" "{ROOT}" && mount -o remount,bind,ro "{ROOT}" && '
              f'touch "{ROOT}/.rw-probe" 2>/dev/null && echo "checkout still writable" >&2 && exit 97; '
              f'exec "{onebyte}" run --config "{node.config}"')
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(node.stderr_path, "wb"))
    node.proc = proc
    try:
        st = node.wait_ready()
        assert st["worker_state"] != "failed", st["worker_error"]
        wait_for(lambda: node.status()["own_steps"] >= 3, 120, "three local steps (the numba kernel ran)")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, node.stderr()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "cannot cache function" not in node.stderr()
