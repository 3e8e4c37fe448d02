"""Harness for node tests: real `onebyte run` processes on loopback, port 0, temp dirs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from onebyte.node.errors import DaemonUnreachable
from onebyte.node.ops.status import is_ready, request

ONEBYTE = [sys.executable, "-m", "onebyte.node.client.cli"]
START_TIMEOUT = 180.0   # model import + load under a loaded 2-core machine
CONVERGE_TIMEOUT = 180.0


def run_cli(*args, cwd=None, timeout=180, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(ONEBYTE + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


class Pending(str):
    """A predicate's "not yet", with the reason: falsy, and what wait_for's timeout reports."""

    def __bool__(self) -> bool:
        return False


def wait_for(pred, timeout: float, what: str, interval: float = 0.1):
    """Poll `pred` until it returns a truthy value (conditions, not sleeps, decide)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


class Node:
    def __init__(self, root: Path, name: str, genesis: Path, peers: list[str], env: dict | None = None,
                 tables: dict | None = None, **fields):
        self.name = name
        self.env = env
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = self.dir / "node.key"
        if not self.key.exists():
            from onebyte.node.keys import write_key
            write_key(self.key)
        self.state_dir = self.dir / "state"
        self.socket = self.dir / "status.sock"
        self.config = self.dir / "node.toml"
        self.fields = dict(listen="127.0.0.1:0", peers=peers, genesis=str(genesis), key=str(self.key),
                           state_dir=str(self.state_dir), status_socket=str(self.socket), batch_size=4,
                           log_level="info", **fields)
        self.tables = dict(tables or {})   # more node.toml tables: [protocol], [labels]
        self.write_config()
        self.proc: subprocess.Popen | None = None
        self.stderr_path = self.dir / "stderr.log"

    def write_config(self) -> None:
        from onebyte.node.genesis import dump_toml
        self.config.write_text(dump_toml({"node": self.fields, **self.tables}))

    def start(self) -> "Node":
        self._err = open(self.stderr_path, "ab")
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen(ONEBYTE + ["run", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=self._err, env=env)
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited {self.proc.returncode}: {self.stderr()[-2000:]}")
            try:
                st = self.status()
            except DaemonUnreachable:
                return None
            return st if is_ready(st) else None
        return wait_for(ready, timeout, f"node {self.name} to be ready", 0.2)

    def status(self) -> dict:
        st = request(self.socket, {"cmd": "status"}, timeout=30)
        assert st["ok"], st
        return st

    def digest(self) -> dict:
        ans = request(self.socket, {"cmd": "digest"}, timeout=60)
        assert ans["ok"], ans
        return ans

    @property
    def addr(self) -> str:
        return self.status()["listen"]

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if getattr(self, "_err", None):
            self._err.close()


def union_digest(state_dirs: list[Path], genesis_path: Path) -> tuple[str, int]:
    """Digest of a fresh replica (base model) that replays the union of the nodes' logs."""
    from onebyte.model import Replica
    from onebyte.model.load import load_model
    from onebyte.node.genesis import load_genesis
    from onebyte.node.storage.log import UpdateLog

    g = load_genesis(genesis_path)
    union: dict[tuple[bytes, int], int] = {}
    for sd in state_dirs:
        lg = UpdateLog(sd / "updates.log", readonly=True)
        for origin, step, q in lg.updates_after({}):
            assert union.setdefault((origin, step), q) == q, "two logs disagree on an update"
    model, _tok = load_model(g.swarm["base_model"])
    replica = Replica(model, g.make_hyper())
    seeder = g.seeder()
    replica.replay([seeder.update(o, s, q) for (o, s), q in sorted(union.items())])
    return replica.digest(), len(union)


def dump_json(obj) -> str:
    return json.dumps(obj, indent=1, default=str)


os.environ.setdefault("OMP_NUM_THREADS", "1")  # node processes share 2 cores
