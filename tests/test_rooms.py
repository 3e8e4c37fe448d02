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
    for src in ("import onebyte.protocol", "from onebyte.node.client import cli", "from ..protocol import wire",
                "def f():\n    from onebyte.node.errors import UserError"):
        f.write_text(src)
        assert rooms_imported(f, "model"), src
    f.write_text("from .grid import Grid\nimport numpy\n")
    assert not rooms_imported(f, "model")


# Inside node/: its groups, each importing only those below it (README.md, "Layout").
# "leaf" is node/'s own top-level modules but the daemon (config, errors, genesis, keys,
# transport, version): everyone may import them; they import none of the groups.
NODE_MAY_IMPORT = {
    "leaf": set(),
    "train": {"leaf"},                                    # the worker: the replica's one writer
    "storage": {"leaf", "train"},                         # log, snapshots, state dir, compaction
    "join": {"leaf", "train", "storage"},                 # snapshot join, both ends
    "ops": {"leaf", "train", "storage"},                  # status, control, stats, metrics
    "daemon": {"leaf", "train", "storage", "join", "ops"},   # node/daemon.py wires them
    "client": {"leaf", "train", "storage", "join", "ops", "daemon"},   # the command line, on top
}


def node_group(parts: tuple) -> str:
    """The group of a module, by its path under node/ (("storage", "log") -> "storage")."""
    if parts[0] in NODE_MAY_IMPORT.keys() - {"leaf"}:
        return parts[0]
    return "leaf"


def node_modules_imported(path: Path, node_root: Path = ROOT / "node") -> set:
    """The node modules a file under node/ imports, as paths under node/, any spelling."""
    here = path.relative_to(node_root).parts[:-1]
    out = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.ImportFrom) and n.level:
            if n.level - 1 > len(here):
                continue   # leaves node/ (..protocol)
            base = here[:len(here) - (n.level - 1)]
            names = n.module.split(".") if n.module else [n.names[0].name]
            out.add(tuple(base) + tuple(names))
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("onebyte.node."):
            out.add(tuple(n.module.split(".")[2:]))
        elif isinstance(n, ast.Import):
            out.update(tuple(a.name.split(".")[2:]) for a in n.names if a.name.startswith("onebyte.node."))
    return out


def test_node_groups_import_only_the_groups_below():
    bad = {}
    for path in sorted((ROOT / "node").rglob("*.py")):
        parts = path.relative_to(ROOT / "node").with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) == 1:
            continue
        mine = node_group(parts)
        for target in node_modules_imported(path):
            theirs = node_group(target)
            if theirs != mine and theirs not in NODE_MAY_IMPORT[mine]:
                bad.setdefault(str(path.relative_to(ROOT)), []).append(".".join(target))
    assert not bad, f"node/ groups import upwards: {bad}"
    assert set(NODE_MAY_IMPORT) - {"leaf", "daemon"} == {p.name for p in (ROOT / "node").iterdir()
                                                         if (p / "__init__.py").exists()}


def test_the_node_group_checker_sees_each_spelling(tmp_path):
    fake = tmp_path / "node" / "storage"
    fake.mkdir(parents=True)
    for src, seen in (("def f():\n    from ..ops.status import request\n", ("ops", "status")),
                      ("from onebyte.node.ops import status\n", ("ops",)),
                      ("import onebyte.node.client.cli\n", ("client", "cli")),
                      ("from .log import UpdateLog\n", ("storage", "log")),
                      ("from ..errors import UserError\n", ("errors",))):
        (fake / "x.py").write_text(src)
        assert seen in node_modules_imported(fake / "x.py", tmp_path / "node"), src
    assert node_group(("ops", "status")) not in NODE_MAY_IMPORT["storage"]
    assert node_group(("errors",)) in NODE_MAY_IMPORT["storage"] and node_group(("ops",)) == "ops"
