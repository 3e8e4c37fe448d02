"""The rooms' import rules (docs/DESIGN.md "The three rooms"): node -> protocol, node -> model,
and nothing else; protocol never imports model or node, model never imports protocol or node,
whether absolutely (onebyte.x) or relatively (..x); and no import cycles between rooms."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAY_IMPORT = {"model": set(), "protocol": set(), "node": {"model", "protocol"}}


def rooms_imported(path: Path, room: str) -> set:
    """The other rooms a file of `room` imports, by any spelling, at any depth of the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level >= 2:   # from ..x import y: a sibling room of this package
                mods = [f"onebyte.{node.module}" if node.module else "onebyte"]
            elif node.level == 1:
                continue          # from .x: the room itself
            else:
                mods = [node.module or ""]
        else:
            continue
        for m in mods:
            parts = m.split(".")
            if parts[0] == "onebyte" and len(parts) > 1 and parts[1] in MAY_IMPORT and parts[1] != room:
                out.add(parts[1])
            elif parts[0] in MAY_IMPORT and parts[0] != room:   # a bare top-level room name
                out.add(parts[0])
    return out


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_room_imports_only_what_the_design_allows(room):
    bad = {}
    for path in sorted((ROOT / room).rglob("*.py")):
        extra = rooms_imported(path, room) - MAY_IMPORT[room]
        if extra:
            bad[str(path.relative_to(ROOT))] = sorted(extra)
    assert not bad, f"{room}/ imports rooms it must not: {bad}"


def test_the_checker_sees_each_spelling(tmp_path):
    f = tmp_path / "x.py"
    for src in ("import onebyte.protocol", "from onebyte.node import cli", "from ..protocol import wire",
                "def f():\n    from onebyte.node.errors import UserError"):
        f.write_text(src)
        assert rooms_imported(f, "model"), src
    f.write_text("from .grid import Grid\nimport numpy\n")
    assert not rooms_imported(f, "model")
