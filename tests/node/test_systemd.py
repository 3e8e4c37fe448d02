"""The systemd unit verifies, and the example config is a valid node config."""

import shutil
import subprocess
from pathlib import Path

import pytest

from onebyte.node import config as node_config
from onebyte.node.config import load_config
from onebyte.node.errors import ConfigError

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


def test_outside_the_unit_its_directories_resolve_as_the_unit_sets_them(monkeypatch, tmp_path):
    """`onebyte status --config /etc/onebyte/NAME.toml` from a root shell: no systemd variables."""
    for var in node_config.UNIT_DIRS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(node_config.UNIT_DIRS, "STATE_DIRECTORY", str(tmp_path / "lib" / "onebyte-{name}"))
    monkeypatch.setitem(node_config.UNIT_DIRS, "RUNTIME_DIRECTORY", str(tmp_path / "run" / "onebyte-{name}"))
    etc = tmp_path / "etc"
    etc.mkdir()
    conf = etc / "main.toml"
    conf.write_text((ROOT / "systemd" / "node.example.toml").read_text())
    cfg = load_config(conf)
    assert cfg.key == etc / "main.key"                       # LoadCredential's source
    assert cfg.state_dir == tmp_path / "lib" / "onebyte-main"
    assert cfg.socket_path == tmp_path / "run" / "onebyte-main" / "status.sock"
    # without the file's name to go by: one line that says what to set
    with pytest.raises(ConfigError, match=r"\$STATE_DIRECTORY.*set it"):
        node_config.parse_config({"node": {"genesis": "g.toml", "key": "k", "state_dir": "$STATE_DIRECTORY"}})


def test_unit_has_the_required_settings():
    text = UNIT.read_text()
    for needle in ("Type=notify", "WatchdogSec=", "StateDirectory=", "RuntimeDirectory=", "DynamicUser=yes",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                   "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "KillSignal=SIGTERM",
                   # exit 2 (config) and 3 (state dir) are not fixed by restarting; SIGHUP reloads
                   "RestartPreventExitStatus=2 3", "StartLimitBurst=", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert needle in text, needle


def test_the_cuda_drop_in_names_devices_as_systemd_takes_them():
    """DeviceAllow= takes a /dev path or char-/block- plus a /proc/devices group, never a glob."""
    lines = [ln.split("=", 1)[1].split() for ln in (ROOT / "systemd" / "cuda.conf").read_text().splitlines()
             if ln.startswith("DeviceAllow=")]
    assert lines
    for spec, access in lines:
        assert "*" not in spec and "?" not in spec and access in ("r", "rw", "rwm")
        assert spec.startswith(("/dev/", "char-", "block-"))


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
