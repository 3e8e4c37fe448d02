"""The demo's local swarm: keys, genesis and configs on loopback, the daemons as `onebyte run`
subprocesses in one process group, and their status sockets (`LocalSwarm`).

Daemons never outlive the demo: they share one process group that is killed on every
exit path (normal end, error, Ctrl-C, SIGTERM), and on Linux each also gets SIGTERM
from the kernel if the demo process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

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

from ...errors import DaemonUnreachable, UserError
from ...ops.status import is_prepared, is_ready, request

# Recommended settings per model spec: hyper-parameters for the genesis and node settings.
# They come from the model-io measurements (docs/data.md); a swarm started by hand with
# `onebyte init` can use the same `--hyper` values.
PRESETS: dict[str, dict] = {
    # Every weight of the top decoder layer and the final norm (3,540,672 weights; `onebyte init
    # --scope top1`): each node caches the frozen layers below for its own 400 training rows
    # and runs only the top layer per loss (model/trunk.py). The scope's step (four probes per
    # step, model/scope.py TOP_STEP) at lr 3e-3: bench/scope_probe.py on held-out rows of the
    # built-in task's training split (docs/results.md).
    "smollm2": {"scope": "top1", "hyper": {"lr": 3e-3}, "batch_size": 16, "minutes": 5.0, "eval_examples": 256,
                "curve_examples": 128, "train_rows_per_node": 400},
    "tiny": {"hyper": {"lr": 1e-3}, "batch_size": 8, "minutes": 0.5, "eval_examples": 64, "curve_examples": 64},
}
DEFAULT_MODEL = "smollm2"
DEFAULT_DATA = "builtin:sentiment"
POLL_S = 1.0              # status poll period of the live view
READY_TIMEOUT_S = 300.0   # a node must be ready (model loaded, log replayed) within this after start
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
    return [sys.executable, "-m", "onebyte.node.client.cli"]


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
class LocalSwarm:
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
    init_args: list = field(default_factory=list)   # more `onebyte init` arguments (e.g. --template)
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
        out = run_cli(args + list(self.init_args), self.root, "onebyte init")
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

    def write_config(self, node: Node, max_steps: int, eval_examples: int, threads: int,
                     extra: dict | None = None) -> None:
        """extra: more [node] fields (numbers, strings, booleans), e.g. a privacy budget."""
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
        ] + ([f"data = {json.dumps(str(node.data))}"] if node.data else [])
          + [f"{k} = {json.dumps(v)}" for k, v in (extra or {}).items()] + [""])
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

    def wait_ready(self, prepared: bool = False, on_poll=None) -> dict[str, dict]:
        """Until every daemon serves (prepared: and its worker finished preparing, e.g. the
        frozen-trunk cache, so it can produce); on_poll(statuses) after each poll."""
        done = is_prepared if prepared else is_ready
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            self.check_alive()
            sts = self.statuses()
            if on_poll is not None:
                on_poll(sts)
            if all(done(st) for st in sts.values()):
                return sts  # type: ignore[return-value]
            if time.monotonic() > deadline:
                down = [k for k, v in sts.items() if not done(v)]
                raise DemoError(f"{', '.join(down)} did not become {'ready to train' if prepared else 'ready'} "
                                f"within {READY_TIMEOUT_S:.0f}s (logs: {self.root}/node*/daemon.log)")
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


