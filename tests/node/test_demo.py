"""`onebyte demo`: the live view and plot on fake status dicts, then the real thing end to
end with the tiny model (real daemons on loopback), and a SIGTERM that must leave no
daemon behind."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onebyte.node.client.liveview import History, LiveView, NodeRow, bar, human_bytes, render_table

ONEBYTE = [sys.executable, "-m", "onebyte.node.client.cli"]


def fake_status(steps: int, *, acc: float | None = None, eval_step: int | None = None) -> dict:
    return {
        "ok": True, "phase": {"name": "ready"}, "node_id": "ab" * 16, "own_steps": steps, "applied_own": steps,
        "applied_replayed": 2 * steps, "applied_total": 3 * steps,
        "replay_backlog": 3, "peers": [{"node_id": "cd" * 16}, {"node_id": "ef" * 16}],
        "loss_mean": 1.0 / (1 + steps), "bytes_in": 100 * steps, "bytes_out": 1000 * steps,
        "drops": {"replayed": 2, "wrong_swarm": 1}, "digest": "0123456789abcdef" * 4,
        "last_eval": None if acc is None else {"step": eval_step, "accuracy": acc, "loss": 0.5},
    }


# --- renderer and plot ------------------------------------------------------------------------

def test_node_row_reads_status_fields_and_tolerates_a_missing_node():
    row = NodeRow.from_status("node1", fake_status(10, acc=0.75, eval_step=10))
    assert (row.up, row.own_steps, row.applied, row.backlog, row.peers) == (True, 10, 30, 3, 2)
    assert row.drops == 3 and row.accuracy == 0.75 and row.bytes_out == 10_000
    assert row.loss == pytest.approx(1 / 11)
    down = NodeRow.from_status("node2", None)
    assert not down.up and down.own_steps == 0
    starting = NodeRow.from_status("node3", {"ok": True, "phase": {"name": "replaying log", "done": 5, "total": 9}})
    assert starting.up and starting.phase == "replaying log 5 of 9"
    assert "(starting: replaying log 5 of 9)" in "\n".join(render_table([row, starting]))


def test_tty_view_redraws_in_place_and_shows_every_node():
    out = io.StringIO()
    view = LiveView(out, duration_s=100, is_tty=True)
    view.update({"node1": fake_status(5), "node2": fake_status(7), "node3": None}, elapsed_s=10)
    first = out.getvalue()
    assert first.split("\x1b[2K")[0] == ""  # nothing to move over on the first draw
    assert "updates 12" in first and "node3" in first and "no status yet" in first
    assert bar(0.1) in first
    view.update({"node1": fake_status(6), "node2": fake_status(8), "node3": fake_status(1)}, elapsed_s=20)
    second = out.getvalue()[len(first):]
    lines_drawn = first.count("\n")
    assert second.startswith(f"\x1b[{lines_drawn}F")  # cursor back to the top of the block
    assert "updates 15" in second and "no status yet" not in second


def test_non_tty_view_prints_plain_lines_every_few_seconds():
    out = io.StringIO()
    view = LiveView(out, duration_s=60, is_tty=False, line_every_s=5)
    for t in range(0, 21):
        view.update({"node1": fake_status(t), "node2": fake_status(2 * t)}, elapsed_s=float(t))
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # t = 0, 5, 10, 15, 20
    assert "\x1b" not in out.getvalue()
    assert "updates=60 (node1:20 node2:40)" in lines[-1]
    assert f"sent={human_bytes(60_000)}" in lines[-1]


def test_history_keeps_one_point_per_evaluation():
    h = History()
    for t, (acc, step) in enumerate([(None, None), (0.5, 10), (0.5, 10), (0.6, 20), (0.6, 20)]):
        h.record({"node1": fake_status(t, acc=acc, eval_step=step), "node2": None}, float(t))
    assert h.nodes() == ["node1"]
    assert h.accuracy_series("node1") == ([1.0, 3.0], [0.5, 0.6])
    xs, ys = h.loss_series("node1")
    assert xs == [0.0, 1.0, 2.0, 3.0, 4.0] and ys[0] == 1.0


def test_plot_writes_a_png(tmp_path):
    from onebyte.node.client.demo.plot import plot_run

    h = History()
    for t in range(5):
        h.record({"node1": fake_status(t, acc=0.5 + t / 20, eval_step=t)}, float(t))
    path = plot_run(h, tmp_path / "sub" / "p.png", acc_before=0.5, acc_after=0.8, t_end=5.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_demo_arguments_are_one_line_errors(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    for args, needle in ((["--nodes", "1"], "--nodes must be between 2 and 16"),
                         (["--out", str(tmp_path / "busy")], "exists and is not empty"),
                         (["--data", str(tmp_path / "train.tsv")], "give --eval-data")):
        proc = subprocess.run(ONEBYTE + ["demo", "--model", "tiny"] + args, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0
        assert proc.stderr.strip().count("\n") == 0, proc.stderr
        assert needle in proc.stderr


# --- the real demo -----------------------------------------------------------------------------

def daemons_using(run_dir: Path) -> list[int]:
    """Pids of live processes whose command line names the run dir (our daemons)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(run_dir) in cmd and "onebyte" in cmd and " run " in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for left-over daemons")
def test_demo_end_to_end_with_the_tiny_model(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(ONEBYTE + ["demo", "--model", "tiny", "--minutes", "0.25", "--out", str(run_dir)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert "== onebyte demo: summary ==" in out and "(identical)" in out
    assert "every node is ready to train" in out   # the training clock starts after preparation
    assert "zero-shot" in out and "fine-tuned" in out
    s = json.loads((run_dir / "summary.json").read_text())
    digests = list(s["digests"].values())
    assert len(digests) == 3 and len(set(digests)) == 1 and len(digests[0]) == 64
    assert s["digests_identical"] is True
    assert s["prepare_seconds"] >= 0 and s["train_seconds"] >= 0.25 * 60
    assert 0.0 <= s["accuracy_before"] <= 1.0 and 0.0 <= s["accuracy_after"] <= 1.0
    assert s["updates"] == sum(s["own_steps"].values()) and s["updates"] > 0
    assert s["bytes_sent"] > 0 and s["fp32_gradient_bytes"] == s["updates"] * 2 * s["params"] * 4
    assert s["fp32_trainable_gradient_bytes"] == s["updates"] * 2 * s["trainable"] * 4
    assert s["trainable_weights"] == s["trainable"] > 0  # as the daemons count them (status)
    assert s["fp32_grad_ratio_trained"] == s["bytes_sent"] / s["fp32_trainable_gradient_bytes"]
    assert Path(s["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert s["plot"] in out
    # "after" is node1's own evaluation of its final replica, on the very examples of "before"
    assert s["eval_examples_after"] == s["eval_examples"] > 0
    assert str(run_dir / "node1" / "node.toml") in s["export_command"]
    assert daemons_using(run_dir) == []
    # Not a TTY here: progress comes as plain lines, no escape sequences in a log.
    assert "\x1b[" not in out and "updates=" in out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for left-over daemons")
def test_sigterm_stops_every_daemon(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(ONEBYTE + ["demo", "--model", "tiny", "--minutes", "5", "--out", str(run_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait until the daemons run (the demo says so)
            if "all nodes up" in line:
                break
        else:
            pytest.fail("the demo ended before its daemons came up: " + proc.stderr.read()[-2000:])
        assert len(daemons_using(run_dir)) == 3
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130
    deadline = time.monotonic() + 10
    while daemons_using(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)  # reaped by the demo already; /proc may lag a moment
    assert daemons_using(run_dir) == []


def test_detached_view_draws_a_fresh_block_below_printed_text():
    out = io.StringIO()
    view = LiveView(out, duration_s=0, is_tty=True, title="converging")
    view.update({"node1": fake_status(1)}, elapsed_s=1)
    assert "converging      1s  updates 1" in out.getvalue() and "%" not in out.getvalue().split("\n")[0]
    view.detach()
    out.write("a phase message\n")
    mark = len(out.getvalue())
    view.update({"node1": fake_status(2)}, elapsed_s=2)
    assert out.getvalue()[mark:].startswith("\x1b[2Kconverging")  # no cursor-up over the message


def test_applied_counts_the_whole_state_after_a_restart():
    st = dict(fake_status(4), applied_total=120)
    assert NodeRow.from_status("node1", st).applied == 120
