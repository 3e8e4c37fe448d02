"""The reference docs name everything the code emits (issue 22, "Docs drift"): every status
field build_status returns (and the keys of its sub-objects) in docs/status.md, every start-up
phase, every Prometheus family node/ops/metrics.py exports in docs/operations.md, every drop reason
the protocol counts in docs/protocol.md and docs/troubleshooting.md, every genesis [hyper]
field in a table of docs/config.md with its real default, and the demo's numbers as the README
and the quickstart state them. Static: reads the sources, starts nothing."""
import ast
import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text()


def functions(path: str, name: str) -> list:
    return [n for n in ast.walk(ast.parse((ROOT / path).read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]


def dict_keys(node) -> set:
    """String keys of every dict literal inside node."""
    return {k.value for d in ast.walk(node) if isinstance(d, ast.Dict)
            for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def table_rows(text: str) -> list:
    """Markdown table rows as lists of cells (a `\\|` inside a cell stays in it)."""
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in text.splitlines() if line.lstrip().startswith("|")]


def named(cell: str) -> list:
    """The backticked names in a table cell, `peers[]` as peers."""
    return [n.removesuffix("[]") for n in re.findall(r"`([^`]+)`", cell)]


def method(path: str, cls: str, name: str):
    """The function `name` defined in class `cls` of `path`."""
    for c in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(c, ast.ClassDef) and c.name == cls:
            for n in c.body:
                if isinstance(n, ast.FunctionDef) and n.name == name:
                    return n
    raise AssertionError(f"{path}: no {cls}.{name}")


# build_status composes its dict of component parts spread into it (`**part`): where each is.
SPREADS = {"status": method("node/train/worker.py", "WorkerStats", "status"),
           "_network": functions("node/ops/stats.py", "_network")[0]}


def returned_dicts(fn) -> list:
    return [n.value for n in ast.walk(fn) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)]


def status_items(fn=None) -> list:
    """(key, value node, function) of every top-level status field: build_status's own and
    those of the parts it spreads in."""
    fn = fn or functions("node/ops/stats.py", "build_status")[0]
    out = []
    for d in returned_dicts(fn):
        for k, v in zip(d.keys, d.values):
            if k is not None:
                out.append((k.value, v, fn))
            else:
                assert isinstance(v, ast.Call), "a ** spread in build_status that is not a call"
                f = v.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id
                assert name in SPREADS, f"build_status spreads {name}(): add it to SPREADS"
                out += status_items(SPREADS[name])
    return out


def build_status_fields() -> set:
    fields = {k for k, _, _ in status_items()}
    assert {"worker_state", "peers", "log", "privacy"} <= fields   # the scan sees the parts
    return fields


def status_rows() -> dict:
    """field -> the text of its row in docs/status.md's field table."""
    rows = {}
    for cells in table_rows(doc("status.md")):
        if len(cells) >= 2:
            for n in named(cells[0]):
                rows[n] = " | ".join(cells[1:])
    return rows


def test_every_status_field_has_a_row_in_status_md():
    rows = status_rows()
    missing = sorted(build_status_fields() - set(rows))
    assert not missing, f"status fields without a row in docs/status.md's field table: {missing}"


def test_every_nested_status_key_is_named_in_status_md():
    """Keys of the dicts build_status builds inline (peers[], restored, log, ...) and of the
    sub-objects other code builds, each in its field's row."""
    local = {}   # dict keys of what a local variable holds: x = {...} or [{...}], x.append({...})
    for fn in [functions("node/ops/stats.py", "build_status")[0], *SPREADS.values()]:
        for n in ast.walk(fn):
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                local.setdefault(n.targets[0].id, set()).update(dict_keys(n.value))
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "append" \
                    and isinstance(n.func.value, ast.Name) and n.args:
                local.setdefault(n.func.value.id, set()).update(dict_keys(n.args[0]))
    rows = status_rows()
    missing = []
    for key, value, _ in status_items():
        nested = dict_keys(value) | (local.get(value.id, set()) if isinstance(value, ast.Name) else set())
        missing += [f"{key}.{k}" for k in sorted(nested)
                    if not re.search(rf"\b{re.escape(k)}\b", rows[key])]
    assert {"version", "rtt_ms"} <= local["peers"]   # the scan sees the peers[] rows
    sub = {"compaction": [("node/storage/compaction.py", "status")], "nat": [("protocol/nat.py", "status")],
           "steering": [("node/train/steering.py", "status")], "audit": [("node/train/audit.py", "status")],
           "own_history": [("protocol/sync.py", "own_history"), ("node/ops/stats.py", "_own_history")],
           "privacy": [("node/train/privacy.py", "status"), ("model/privacy.py", "_summarize")],
           "snapshot_join": [("node/join/snapshot_join.py", "Joined", "status")],
           "restored": [("node/storage/state.py", "Restored", "status")], "log": [("node/storage/log.py", "UpdateLog", "status")],
           "update_rate": [("node/ops/stats.py", "Rates", "status")],
           "version_vector": [("node/ops/stats.py", "_version_vector")],
           "bootstrap_silent": [("node/ops/members.py", "PeerBook", "silent_status")]}
    for field, sources in sub.items():
        for path, *name in sources:
            fns = [method(path, *name)] if len(name) == 2 else functions(path, name[0])
            assert fns, f"{path}: no function {name} (the source of status `{field}`)"
            for k in set().union(*(dict_keys(f) for f in fns)):
                if not re.search(rf"\b{re.escape(k)}\b", rows[field]):
                    missing.append(f"{field}.{k}")
    assert not missing, f"status keys docs/status.md does not name: {missing}"


def test_every_start_up_phase_is_in_status_md():
    phases = {"starting", "ready"}   # Phase's first name, and the last
    for path in (ROOT / "node").rglob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant)):
                continue
            f = call.func
            if (isinstance(f, ast.Name) and f.id == "progress") or \
                    (isinstance(f, ast.Attribute) and f.attr == "set"
                     and isinstance(f.value, ast.Attribute) and f.value.attr == "phase"):
                phases.add(call.args[0].value)
    assert {"loading model", "replaying log", "fetching snapshot", "joining"} <= phases   # the scan works
    text = doc("status.md")
    assert not sorted(p for p in phases if f"`{p}`" not in text), "phases missing from docs/status.md"


def exported_metrics() -> set:
    src = (ROOT / "node" / "ops" / "metrics.py").read_text()
    suffix = {"CounterMetricFamily": "_total", "_by_direction": "_total", "InfoMetricFamily": "_info",
              "GaugeMetricFamily": "", "Histogram": ""}
    found = re.findall(r"\b(CounterMetricFamily|GaugeMetricFamily|InfoMetricFamily|Histogram|_by_direction)"
                       r"\(\s*\"(onebyte_[a-z0-9_]+)\"", src)
    return {name + suffix[kind] for kind, name in found}


def test_every_metric_is_listed_in_operations_md():
    names = exported_metrics()
    assert {"onebyte_ready", "onebyte_network_bytes_total", "onebyte_network_message_bytes_total",
            "onebyte_build_info", "onebyte_local_step_seconds"} <= names   # the scan works
    text = doc("operations.md")
    missing = sorted(n for n in names if not re.search(rf"`{n}[`{{ ]", text))
    assert not missing, f"metrics docs/operations.md does not list: {missing}"


def drop_reasons() -> set:
    pat = re.compile(r"(?:WireError|\.drop)\(\s*[\"']([a-z_]+)[\"']")
    return {r for room in ("protocol", "node") for path in (ROOT / room).glob("*.py")
            for r in pat.findall(path.read_text())}


def test_every_drop_reason_is_documented():
    reasons = drop_reasons()
    assert {"malformed", "wrong_swarm", "excluded", "no_path"} <= reasons   # the scan works
    protocol = doc("protocol.md").split("## Robustness and bounded memory", 1)[1].split("\n## ", 1)[0]
    troubleshooting = {n for cells in table_rows(doc("troubleshooting.md")) if cells for n in named(cells[0])}
    assert not sorted(r for r in reasons if f"`{r}`" not in protocol), \
        "drop reasons missing from docs/protocol.md, Robustness"
    assert not sorted(reasons - troubleshooting), "drop reasons missing from docs/troubleshooting.md's table"


def test_every_hyper_field_has_a_row_with_its_default_in_config_md():
    from onebyte.model.hyper import Hyper
    fields = {f.name: f.default for f in dataclasses.fields(Hyper)}
    documented = {}
    for cells in table_rows(doc("config.md")):
        if len(cells) < 3:
            continue
        names, defaults = named(cells[0]), named(cells[1])
        if names and set(names) <= set(fields) and len(names) == len(defaults):
            documented.update(zip(names, defaults))
    missing = sorted(set(fields) - set(documented))
    assert not missing, f"[hyper] fields without a row (name, default, meaning) in docs/config.md: {missing}"
    for name, text in documented.items():
        assert tomllib.loads(f"v = {text}")["v"] == fields[name], f"docs/config.md: {name} default {text}"


def test_the_demo_numbers_agree_with_its_preset():
    tree = ast.parse((ROOT / "node" / "client" / "demo" / "swarm.py").read_text())
    presets = next(ast.literal_eval(n.value) for n in tree.body
                   if (isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PRESETS"
                                                         for t in n.targets))
                   or (isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == "PRESETS"))
    p = presets["smollm2"]
    minutes = int(p["minutes"]) if p["minutes"] == int(p["minutes"]) else p["minutes"]
    readme, quick = (ROOT / "README.md").read_text(), doc("quickstart.md")
    run = (ROOT / "node" / "client" / "demo" / "run.py").read_text()
    assert f"{minutes} for smollm2" in run and f"| `--minutes M` | {minutes} for smollm2 |" in quick
    assert f"{minutes} training minutes" in readme and f"{minutes} minutes of training" in quick
    assert f"`{p['scope']}` for smollm2" in quick and f"--scope {p['scope']}" in readme
    for text in (readme, quick):
        assert f"own {p['train_rows_per_node']} training rows" in text
        assert f"{p['eval_examples']} held-out examples" in text
    # the measured numbers the README and the quickstart both quote
    for fact in ("52.3%", "99.6%", "+47.3", "+47.7", "42.2", "6m37s", "29,968", "3,540,672", "25 s"):
        assert fact in quick and fact.replace("25 s", "25s") in readme, fact


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
