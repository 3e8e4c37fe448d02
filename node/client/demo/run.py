"""`onebyte demo`: a real swarm of daemons on this machine, end to end, in minutes.

What it does, in order (every step uses the same commands a user would):
1. `onebyte keygen` per node, `onebyte init` for a closed-swarm genesis naming those keys,
   one node config per node (docs/config.md) on loopback ports;
2. evaluates the base model zero-shot on the held-out split (the "before");
3. starts the nodes as `onebyte run --config ...` subprocesses in one process group and
   shows a live view from their status sockets while they fine-tune;
4. stops the producers in place (status-socket command `stop_producing`): each node then
   only serves and replays; anti-entropy brings every replica to the same update set,
   and the demo waits for identical digests;
5. node1 evaluates its converged replica on the same held-out examples (the "after");
   the demo prints the summary (accuracy before/after, digests, bytes on the wire versus
   fp32 gradients, the `onebyte export` command for the model) and writes a PNG plot.

The swarm itself is node/client/demo/swarm.py; evaluation node/client/demo/eval.py; the plot node/client/demo/plot.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from ..liveview import History, LiveView, fmt_seconds, render_summary
from ...ops.status import request
from .eval import Evaluator, evaluate_model
from .swarm import (DEFAULT_DATA, DEFAULT_MODEL, POLL_S, PRESETS, QUIESCE_TIMEOUT_S, DemoError, LocalSwarm,
                    _Terminated)


# --- the run --------------------------------------------------------------------------------

def _say(text: str) -> None:
    print(text, flush=True)


def train(swarm: LocalSwarm, view: LiveView, history: History, train_s: float, t_train: float) -> dict:
    """Poll and draw until the training time is up; returns the last statuses."""
    # Three evaluations inside the run (at 1/4, 1/2 and 3/4 of it): each occupies a node's
    # worker for a while, so more would cost training steps; the zero-shot and final
    # evaluations give the curve its ends.
    evaluator = Evaluator(swarm, every_s=max(5.0, train_s / 4))
    evaluator.start()
    try:
        while True:
            swarm.check_alive()
            sts = swarm.statuses()
            elapsed = time.monotonic() - t_train
            history.record(sts, elapsed)
            view.update(sts, elapsed)
            if elapsed >= train_s:
                return sts
            time.sleep(POLL_S)
    finally:
        evaluator.halt.set()


def _preparing_note(sts: dict) -> str:
    """"node1 120/656, node2 ready, ..." from the status `trunk_cache` progress."""
    parts = []
    for name, st in sts.items():
        tc = (st or {}).get("trunk_cache") or {}
        if (st or {}).get("worker_state") not in ("starting", "preparing"):
            parts.append(f"{name} ready")
        elif tc.get("total"):
            parts.append(f"{name} {tc.get('done', 0)}/{tc['total']}")
        else:
            parts.append(f"{name} starting")
    return "preparing: " + ", ".join(parts)


def quiesce(swarm: LocalSwarm, view: LiveView, history: History, t_train: float) -> dict[str, dict]:
    """Wait until every node has applied the same update set; returns each node's
    {"digest", "updates", "vv"} from the `digest` command (digest and vv read together)."""
    deadline = time.monotonic() + QUIESCE_TIMEOUT_S
    t0 = time.monotonic()
    while True:
        swarm.check_alive()
        answers, converged = swarm.digests()
        sts = swarm.statuses()
        history.record(sts, time.monotonic() - t_train)
        counts = "/".join(str(a.get("updates", "?")) if a else "?" for a in answers.values())
        view.update(sts, time.monotonic() - t0, note=f"converging: updates applied {counts}")
        if converged:
            return answers  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise DemoError(f"replicas did not converge within {QUIESCE_TIMEOUT_S:.0f}s (updates {counts}; "
                            f"logs: {swarm.root}/node*/daemon.log)")
        time.sleep(POLL_S)


def cmd_demo(args: argparse.Namespace) -> int:
    preset = PRESETS.get(args.model.split(":")[0], PRESETS["tiny"] if args.model.startswith("tiny") else {})
    minutes = args.minutes if args.minutes is not None else preset.get("minutes", 5.0)
    batch_size = args.batch_size or preset.get("batch_size", 8)
    eval_n = args.eval_examples or preset.get("eval_examples", 256)
    if args.nodes < 2 or args.nodes > 16:
        raise DemoError(f"--nodes must be between 2 and 16, got {args.nodes}")
    if not minutes > 0:
        raise DemoError(f"--minutes must be > 0, got {minutes}")
    if not args.data.startswith("builtin:") and not args.eval_data:
        raise DemoError("--data is a file: give --eval-data FILE too (held-out examples, not the training ones)")
    hyper = dict(preset.get("hyper", {}))
    for item in args.hyper:
        key, sep, val = item.partition("=")
        if not sep:
            raise DemoError(f"--hyper {item!r}: expected NAME=VALUE")
        hyper[key] = val
    if args.out:
        root = Path(args.out).expanduser().resolve()
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise DemoError(f"--out {root} exists and is not empty; choose a new folder")
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="onebyte-demo-"))
    cpus = os.cpu_count() or 1
    swarm = LocalSwarm(root=root, n=args.nodes, model=args.model, data=args.data,
                  eval_data=args.eval_data, hyper=hyper,
                  batch_size=batch_size, curve_examples=min(eval_n, preset.get("curve_examples", 128)),
                  eval_examples=eval_n, train_rows_per_node=preset.get("train_rows_per_node", 0),
                  scope=args.scope or preset.get("scope", ""),
                  # One torch thread per node when nodes outnumber cores: oversubscribed
                  # threads cost more in contention than they add.
                  threads=max(1, cpus // args.nodes))
    train_s = minutes * 60.0
    tty = sys.stdout.isatty()

    def on_term(signum, frame):
        raise _Terminated()

    old_term = signal.signal(signal.SIGTERM, on_term)
    t_zero = time.monotonic()
    try:
        return _run(args, swarm, root, train_s, eval_n, tty, t_zero)
    except (KeyboardInterrupt, _Terminated):
        print("\ninterrupted: stopping the daemons", file=sys.stderr, flush=True)
        swarm.stop(timeout=20.0)
        print(f"stopped; run dir kept: {root}", file=sys.stderr)
        return 130
    finally:
        swarm.stop(timeout=20.0)
        if swarm._sock_dir is not None:
            for p in swarm._sock_dir.glob("*.sock"):
                p.unlink(missing_ok=True)  # left only by a daemon that was SIGKILLed
            swarm._sock_dir.rmdir()
        signal.signal(signal.SIGTERM, old_term)


def _run(args, swarm: LocalSwarm, root: Path, train_s: float, eval_n: int, tty: bool, t_zero: float) -> int:
    from .plot import plot_run

    cpus = os.cpu_count() or 1

    views: list[LiveView] = []

    def say(text: str) -> None:  # phase messages carry the demo's clock, so slow phases show
        for v in views:
            v.detach()  # the message goes below the live view, never under its redraw
        m, sec = divmod(int(time.monotonic() - t_zero), 60)
        _say(f"{m:02d}:{sec:02d} {text}")

    say(f"onebyte demo: {swarm.n} nodes fine-tune {swarm.model} on {swarm.data} for "
        f"{fmt_seconds(train_s)}, exchanging one byte per update")
    say(f"run dir {root}")
    swarm_id = swarm.prepare()
    genesis = root / "genesis.toml"
    say(f"keys and genesis written (closed swarm of {swarm.n} keys), swarm id {swarm_id[:16]}…")

    say(f"evaluating the base model zero-shot on {eval_n} held-out examples …")
    before = evaluate_model(swarm.model, genesis, eval_n, threads=min(cpus, 4))
    say(f"zero-shot accuracy {before['accuracy'] * 100:.1f}% (n={before['n']})")

    say(f"starting {swarm.n} daemons (`onebyte run`) on 127.0.0.1 ports "
        f"{', '.join(str(n.port) for n in swarm.nodes)} …")
    swarm.start()
    swarm.wait_ready()
    say("all nodes up; each caches what its frozen layers compute for its examples …")
    prep = LiveView(sys.stdout, 0, tty, title="preparing")
    views.append(prep)
    t_prep = time.monotonic()
    swarm.wait_ready(prepared=True, on_poll=lambda sts: prep.update(sts, time.monotonic() - t_prep,
                                                                    note=_preparing_note(sts)))
    prepare_seconds = time.monotonic() - t_prep
    say(f"every node is ready to train ({fmt_seconds(prepare_seconds)} of preparation); "
        f"the {fmt_seconds(train_s)} of training start now (live view below)")
    view = LiveView(sys.stdout, train_s, tty, title="training")
    views.append(view)
    history = History()
    t_train = time.monotonic()
    train(swarm, view, history, train_s, t_train)
    train_seconds = time.monotonic() - t_train

    # Stop the producers in place: each daemon finishes the step it is in and from then on
    # only replays and serves (status-socket command `stop_producing`), so no restart is
    # needed; anti-entropy fills in whatever was still in flight.
    wire = {n.name: 0 for n in swarm.nodes}  # bytes_out is read once at the end
    say("time is up: stopping the producers (each node now only replays and serves) …")
    for node in swarm.nodes:
        res = request(node.socket, {"cmd": "stop_producing"}, timeout=120)
        if not res.get("ok"):
            raise DemoError(f"{node.name} could not stop producing: {res.get('error')}")
    say("waiting until every replica holds the same updates …")
    settle = LiveView(sys.stdout, 0, tty, title="converging")
    views.append(settle)
    digests = quiesce(swarm, settle, history, t_train)
    first = next(iter(digests.values()))
    updates = first["updates"]
    own_final = {n.name: int(first["vv"].get(n.node_id, 0)) for n in swarm.nodes}

    node1 = swarm.nodes[0]
    say(f"replicas identical; {node1.name} evaluates its weights on the same {eval_n} held-out examples …")
    after = request(node1.socket, {"cmd": "eval", "examples": eval_n}, timeout=1800)
    if not after.get("ok"):
        raise DemoError(f"{node1.name} could not evaluate: {after.get('error')}")
    check = request(node1.socket, {"cmd": "digest"}, timeout=60)
    if check.get("digest") != first["digest"]:
        raise DemoError(f"{node1.name}'s weights changed after the swarm went quiet (digest "
                        f"{str(check.get('digest'))[:16]} != {first['digest'][:16]})")
    end_sts = swarm.statuses()
    trainable = int((end_sts.get(node1.name) or {}).get("trainable_weights", 0))
    for node in swarm.nodes:
        wire[node.name] += int((end_sts.get(node.name) or {}).get("bytes_out", 0))
    swarm.stop()
    t_end = time.monotonic() - t_zero

    try:
        png = plot_run(history, root / "demo.png", acc_before=before["accuracy"], acc_after=after["accuracy"],
                       t_end=train_seconds, title=f"onebyte demo: {swarm.n} nodes, {swarm.model}, {swarm.data}")
    except ImportError:
        png = None
        say("no plot: matplotlib is not installed (pip install 'onebyte[demo]')")
    summary = {
        "model": swarm.model, "data": swarm.data, "nodes": swarm.n, "swarm_id": swarm_id,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(t_end, 1),
        "prepare_seconds": round(prepare_seconds, 1),
        "updates": updates, "own_steps": own_final,
        "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"], "eval_examples": before["n"],
        "eval_examples_after": after.get("n"),
        "digests": {k: a["digest"] for k, a in digests.items()},
        "digests_identical": len({a["digest"] for a in digests.values()}) == 1,
        "bytes_sent": sum(wire.values()), "params": before["params"], "trainable": trainable,
        "trainable_weights": trainable,
        # What exchanging fp32 gradients instead would cost: every update to every peer,
        # 4 bytes per parameter, for the full model and for the trainable tensors only.
        "fp32_gradient_bytes": updates * (swarm.n - 1) * before["params"] * 4,
        "fp32_trainable_gradient_bytes": updates * (swarm.n - 1) * trainable * 4,
        "plot": str(png) if png else None, "run_dir": str(root),
        "export_command": f"onebyte export --config {node1.config} --out {root / 'model'}",
    }
    # wire bytes over what fp32 gradients of the *trained* weights would have cost (target <= 1/1000)
    summary["fp32_grad_ratio_trained"] = (summary["bytes_sent"] / summary["fp32_trainable_gradient_bytes"]
                                          if summary["fp32_trainable_gradient_bytes"] else None)
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _say(render_summary(summary))
    return 0 if summary["digests_identical"] else 1


def add_parser(sub) -> None:
    """Register `onebyte demo` (called by node/client/cli.py)."""
    s = sub.add_parser(
        "demo", help="run a local swarm of real daemons end to end (minutes)",
        description="Start a swarm of daemons on loopback, fine-tune, show a live view, then stop the "
        "producers, check that all replicas hold identical weights, and report held-out accuracy "
        "before and after, bytes on the wire and a plot. Everything goes in a run dir.")
    s.add_argument("--minutes", type=float, default=None,
                   help="training time in minutes, counted from when every node is ready (default: per model, 5 for smollm2)")
    s.add_argument("--nodes", type=int, default=3, help="number of daemons (default 3)")
    s.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL}; tiny for a quick run)")
    s.add_argument("--data", default=DEFAULT_DATA, help=f"training data: built-in task or file (default {DEFAULT_DATA})")
    s.add_argument("--eval-data", default="", help="held-out data (default: the built-in task's held-out "
                   "split; required with a data file)")
    s.add_argument("--out", default="", help="run dir for keys, state, logs, plot (default: a new temp folder)")
    s.add_argument("--batch-size", type=int, default=0, help="examples per local step (default: per model)")
    s.add_argument("--eval-examples", type=int, default=0, help="held-out examples evaluated (default: per model)")
    s.add_argument("--scope", default="", help="trainable scope (onebyte init --scope): norm, topN, lora-topN "
                   "(default: per model, top1 for smollm2)")
    s.add_argument("--hyper", action="append", default=[], metavar="NAME=VALUE",
                   help="override a genesis hyper-parameter (see onebyte init --help)")
    s.set_defaults(func=cmd_demo)
