"""bench/gpu_check.py stays runnable: its CPU smoke mode must agree bit for bit (tiny model)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_smoke(tmp_path):
    out = tmp_path / "gc.json"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--model", "tiny",
           "--updates", "40", "--skip-tests", "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["ok"] and r["bit_identical"] and r["digest_cpu"] == r["digest_dev"] and r["updates"] == 40
