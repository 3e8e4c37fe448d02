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

Daemons never outlive the demo: they share one process group that is killed on every
exit path (normal end, error, Ctrl-C, SIGTERM), and on Linux each also gets SIGTERM
from the kernel if the demo process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DaemonUnreachable, UserError
from .liveview import History, LiveView, fmt_seconds, render_summary
from .demo_eval import Evaluator, evaluate_model
from .status import request

# Recommended settings per model spec: hyper-parameters for the genesis and node settings.
# They come from the model-io measurements (docs/data.md); a swarm started by hand with
# `onebyte init` can use the same `--hyper` values.
PRESETS: dict[str, dict] = {
    # Every weight of the top decoder layer and the final norm (3,540,672 weights; `onebyte init
    # --scope top1`): each node caches the frozen layers below for its own 400 training rows
    # and runs only the top layer per loss (model/trunk.py). lr: bench/scope_probe.py on
    # held-out rows of the built-in task's training split (docs/results.md).
    "smollm2": {"scope": "top1", "hyper": {"lr": 1e-3}, "batch_size": 16, "minutes": 5.0, "eval_examples": 256,
                "curve_examples": 128, "train_rows_per_node": 400},
    "tiny": {"hyper": {"lr": 1e-3}, "batch_size": 8, "minutes": 0.5, "eval_examples": 64, "curve_examples": 64},
}
DEFAULT_MODEL = "smollm2"
DEFAULT_DATA = "builtin:sentiment"
POLL_S = 1.0              # status poll period of the live view
READY_TIMEOUT_S = 300.0   # a node must answer its status socket within this after start
QUIESCE_TIMEOUT_S = 180.0  # replicas must converge within this after the producers stop
STOP_TIMEOUT_S = 60.0      # graceful leave (final snapshot) before SIGKILL


class DemoError(UserError):
    """The demo could not run; the message says which step failed and where the logs are."""

    exit_code = 1


class _Terminated(Exception):
    """SIGTERM to the demo: unwind through the same cleanup as Ctrl-C."""


# --- the swarm's processes ------------------------------------------------------------------

def _pdeathsig() -> None:
    """Child-side: ask Linux to SIGTERM us when the demo dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux/glibc: the process-group cleanup still covers every normal exit


def onebyte_cmd() -> list[str]:
    """How to call the CLI: the `onebyte` script beside this Python, else `python -m`."""
    script = Path(sys.executable).with_name("onebyte")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "onebyte.node.cli"]


def run_cli(args: list[str], cwd: Path, what: str, timeout: float = 600.0) -> str:
    """Run one short `onebyte ...` command; its one-line error becomes ours."""
    proc = subprocess.run(onebyte_cmd() + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise DemoError(f"{what} failed: {err}")
    return proc.stdout


def free_udp_ports(n: int) -> list[int]:
    """n distinct free loopback UDP ports, held open together so they differ. Port 0 in
    the configs would serialize start-up (each node's port must be known to the others
    before they start); a port taken between here and the bind fails that node's start
    with a clear error."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Node:
    name: str
    dir: Path
    port: int
    public_key: str = ""
    node_id: str = ""
    proc: object = None  # subprocess.Popen
    data: str = ""       # this node's own training data (default: the genesis [task] data)

    @property
    def config(self) -> Path:
        return self.dir / "node.toml"

    sock_dir: Path | None = None  # set when the run dir's path is too long for a Unix socket

    @property
    def socket(self) -> Path:
        return (self.sock_dir or self.dir) / ("status.sock" if self.sock_dir is None else f"{self.name}.sock")

    @property
    def log(self) -> Path:
        return self.dir / "daemon.log"

    def log_tail(self, n: int = 5) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:])


@dataclass
class Swarm:
    """N daemons in one process group, configured under `root`."""

    root: Path
    n: int
    model: str
    data: str
    eval_data: str
    hyper: dict
    batch_size: int
    curve_examples: int  # examples per periodic evaluation inside a node (the plot's curve)
    eval_examples: int   # examples of the before/after evaluation
    threads: int
    train_rows_per_node: int = 0  # > 0: each node trains on its own disjoint slice of a built-in task
    scope: str = ""               # `onebyte init --scope` (model/scope.py), before the hyper overrides
    nodes: list[Node] = field(default_factory=list)
    pgid: int | None = None
    _sock_dir: Path | None = None

    def prepare(self) -> str:
        """Keys, genesis and configs. Returns the swarm id (hex)."""
        ports = free_udp_ports(self.n)
        for i in range(self.n):
            node = Node(name=f"node{i + 1}", dir=self.root / f"node{i + 1}", port=ports[i])
            if len(str(node.socket).encode()) > 100:
                # Unix socket paths are limited to ~107 bytes: a deep --out gets its
                # sockets in a short private temp folder instead.
                node.sock_dir = self.sock_dir()
            node.dir.mkdir(parents=True, exist_ok=True)
            out = run_cli(["keygen", "--out", "node.key"], node.dir, f"{node.name}: onebyte keygen")
            for line in out.splitlines():
                if line.startswith("public key "):
                    node.public_key = line.split()[-1]
                elif line.startswith("node id "):
                    node.node_id = line.split()[-1]
            if len(node.public_key) != 64:
                raise DemoError(f"onebyte keygen printed no public key: {out.strip()!r}")
            self.nodes.append(node)
        # A closed swarm: only these keys may publish, as a private swarm would be run.
        args = ["init", "--model", self.model, "--data", self.data, "--name", "demo", "--out", "genesis.toml",
                "--admission", "closed"]
        if self.eval_data:
            args += ["--eval-data", self.eval_data]
        for node in self.nodes:
            args += ["--member", node.public_key]
        if self.scope:
            args += ["--scope", self.scope]
        for k, v in self.hyper.items():
            args += ["--hyper", f"{k}={v}"]
        out = run_cli(args, self.root, "onebyte init")
        swarm_id = next((ln.split()[-1] for ln in out.splitlines() if ln.startswith("swarm id ")), "")
        if self.train_rows_per_node and self.data.startswith("builtin:"):
            self.write_shards()
        for node in self.nodes:
            self.write_config(node, max_steps=0, eval_examples=self.curve_examples, threads=self.threads)
        return swarm_id

    def write_shards(self) -> None:
        """Node k trains on rows k, k + n, ... of the built-in training split (train_rows_per_node
        of them), written as a TSV beside its config: disjoint data per node, as in a real swarm,
        and a pool small enough for each node's frozen-trunk cache to build in seconds."""
        import csv

        from onebyte.model.tasks import builtin_examples
        rows = builtin_examples(self.data, "train")
        for k, node in enumerate(self.nodes):
            mine = rows[k::self.n][:self.train_rows_per_node]
            path = node.dir / "train.tsv"
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(mine[0]), delimiter="\t")
                w.writeheader()
                w.writerows(mine)
            node.data = str(path)

    def sock_dir(self) -> Path:
        if self._sock_dir is None:
            self._sock_dir = Path(tempfile.mkdtemp(prefix="onebyte-sock-"))
        return self._sock_dir

    def write_config(self, node: Node, max_steps: int, eval_examples: int, threads: int) -> None:
        peers = [f"127.0.0.1:{o.port}" for o in self.nodes if o is not node]
        text = "\n".join([
            "# Written by `onebyte demo`; fields: docs/config.md",
            "[node]",
            f'listen = "127.0.0.1:{node.port}"',
            "peers = [" + ", ".join(f'"{p}"' for p in peers) + "]",
            'genesis = "../genesis.toml"',
            'key = "node.key"',
            'state_dir = "state"',
            f'status_socket = "{node.socket}"',
            f"batch_size = {self.batch_size}",
            f"max_steps = {max_steps}",
            f"eval_examples = {eval_examples}",
            f"seed = {self.nodes.index(node)}",
            f"threads = {threads}",
        ] + ([f"data = {json.dumps(str(node.data))}"] if node.data else []) + [""])
        node.config.write_text(text)

    def start(self) -> None:
        for node in self.nodes:
            logf = open(node.log, "ab")
            try:
                # All nodes join the first one's process group: one killpg stops them all,
                # and a Ctrl-C in the terminal reaches only the demo, which then stops them
                # in order instead of letting them die mid-write.
                node.proc = subprocess.Popen(
                    onebyte_cmd() + ["run", "--config", str(node.config)], cwd=node.dir,
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    process_group=0 if self.pgid is None else self.pgid,
                    preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None)
            finally:
                logf.close()
            if self.pgid is None:
                self.pgid = node.proc.pid

    def status(self, node: Node, timeout: float = 5.0) -> dict | None:
        try:
            st = request(node.socket, {"cmd": "status"}, timeout=timeout)
        except (DaemonUnreachable, OSError, ValueError):
            return None
        return st if st.get("ok") else None

    def statuses(self) -> dict[str, dict | None]:
        return {n.name: self.status(n) for n in self.nodes}

    def digests(self) -> tuple[dict[str, dict | None], bool]:
        """Each node's {"digest", "updates", "vv"} (`digest` command: digest and vv read together;
        None where a node does not answer), and whether all hold the same update set. Same
        updates with different digests would break exactness: DemoError."""
        answers = {}
        for node in self.nodes:
            try:
                answers[node.name] = request(node.socket, {"cmd": "digest"}, timeout=60)
            except (DaemonUnreachable, OSError, ValueError):
                answers[node.name] = None
        got = [a for a in answers.values() if a and a.get("ok")]
        if len(got) < len(answers) or any(a["vv"] != got[0]["vv"] for a in got):
            return answers, False
        if any(a["digest"] != got[0]["digest"] for a in got):
            raise DemoError("replicas applied the same updates but their digests differ: "
                            + ", ".join(f"{k} {a['digest'][:16]}" for k, a in answers.items()))
        return answers, True

    def check_alive(self) -> None:
        for node in self.nodes:
            rc = node.proc.poll() if node.proc is not None else None
            if rc is not None:
                raise DemoError(f"{node.name} exited with code {rc}: {node.log_tail()} (log: {node.log})")

    def wait_ready(self) -> dict[str, dict]:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self.check_alive()
            sts = self.statuses()
            if all(sts.values()):
                return sts  # type: ignore[return-value]
            if time.monotonic() > deadline:
                down = [k for k, v in sts.items() if not v]
                raise DemoError(f"{', '.join(down)} did not answer on the status socket within "
                                f"{READY_TIMEOUT_S:.0f}s (logs: {self.root}/node*/daemon.log)")
            time.sleep(0.5)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Graceful: SIGTERM (leave + final snapshot), then SIGKILL what is left."""
        if self.pgid is None:
            return
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # handled by the SIGKILL below
                pass
        # SIGKILL only while a member is unreaped: the group id is then still ours, never
        # a recycled one.
        if any(n.proc is not None and n.proc.poll() is None for n in self.nodes):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.nodes:
            if node.proc is not None:
                node.proc.wait()
                node.proc = None
        self.pgid = None


# --- the run --------------------------------------------------------------------------------

def _say(text: str) -> None:
    print(text, flush=True)


def train(swarm: Swarm, view: LiveView, history: History, train_s: float, t_train: float) -> dict:
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


def quiesce(swarm: Swarm, view: LiveView, history: History, t_train: float) -> dict[str, dict]:
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
    swarm = Swarm(root=root, n=args.nodes, model=args.model, data=args.data,
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


def _run(args, swarm: Swarm, root: Path, train_s: float, eval_n: int, tty: bool, t_zero: float) -> int:
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
    say("all nodes up; training (live view below)")
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

    png = plot_run(history, root / "demo.png", acc_before=before["accuracy"], acc_after=after["accuracy"],
                   t_end=train_seconds, title=f"onebyte demo: {swarm.n} nodes, {swarm.model}, {swarm.data}")
    summary = {
        "model": swarm.model, "data": swarm.data, "nodes": swarm.n, "swarm_id": swarm_id,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(t_end, 1),
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
        "plot": str(png), "run_dir": str(root),
        "export_command": f"onebyte export --config {node1.config} --out {root / 'model'}",
    }
    # wire bytes over what fp32 gradients of the *trained* weights would have cost (target <= 1/1000)
    summary["fp32_grad_ratio_trained"] = (summary["bytes_sent"] / summary["fp32_trainable_gradient_bytes"]
                                          if summary["fp32_trainable_gradient_bytes"] else None)
    (root / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    _say(render_summary(summary))
    return 0 if summary["digests_identical"] else 1


def add_parser(sub) -> None:
    """Register `onebyte demo` (called by node/cli.py)."""
    s = sub.add_parser(
        "demo", help="run a local swarm of real daemons end to end (minutes)",
        description="Start a swarm of daemons on loopback, fine-tune, show a live view, then stop the "
        "producers, check that all replicas hold identical weights, and report held-out accuracy "
        "before and after, bytes on the wire and a plot. Everything goes in a run dir.")
    s.add_argument("--minutes", type=float, default=None,
                   help="training time in minutes (default: per model, 6 for smollm2)")
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
