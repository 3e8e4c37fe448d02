"""The wheel installs one namespace, `onebyte.*`, and nothing else at the top level.

Bare `model`, `node` or `protocol` packages in site-packages would collide with
unrelated projects of those names on the package index.
"""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_top_level_is_only_onebyte(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("onebyte-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"onebyte"}, tops
    for room in ("model", "protocol", "node"):
        assert f"onebyte/{room}/__init__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "onebyte = onebyte.node.client.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
