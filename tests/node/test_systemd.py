"""The systemd unit verifies, and the example config is a valid node config."""

import shutil
import subprocess
from pathlib import Path

import pytest

from onebyte.node.config import load_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "onebyte@.service"


def test_example_config_parses(monkeypatch):
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/onebyte@main.service")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/onebyte-main")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/onebyte-main")
    cfg = load_config(ROOT / "systemd" / "node.example.toml")
    assert str(cfg.key) == "/run/credentials/onebyte@main.service/node.key"
    assert str(cfg.state_dir) == "/var/lib/onebyte-main"
    assert str(cfg.socket_path) == "/run/onebyte-main/status.sock"
    assert cfg.listen == ("::", 7470)


def test_unit_has_the_required_settings():
    text = UNIT.read_text()
    for needle in ("Type=notify", "WatchdogSec=", "StateDirectory=", "RuntimeDirectory=", "DynamicUser=yes",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "KillSignal=SIGTERM"):
        assert needle in text, needle


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    # An instance of the template, with ExecStart pointing at a binary that exists here
    # (verify checks that the executable is present).
    exe = shutil.which("onebyte") or str(Path(__import__("sys").executable).parent / "onebyte")
    unit = tmp_path / "onebyte@test.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/onebyte", exe))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                       capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines()
                if "onebyte" in ln and "Documentation" not in ln]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
