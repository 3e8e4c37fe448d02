"""Real `onebyte run` daemons inside a Lab's host namespaces (tests/net and bench/wan.py).

Each daemon listens on 0.0.0.0:7470 in its own namespace (so it keeps serving when its
address moves), keeps its key, state and status socket in a temp dir, and is reached by the
test through that Unix socket: path-based Unix sockets do not belong to a network namespace.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from node_harness import ONEBYTE, Node, run_cli, union_digest, wait_for  # noqa: E402

from onebyte.node.errors import DaemonUnreachable  # noqa: E402
from onebyte.node.ops.status import request  # noqa: E402

PORT = 7470
# Few, slow producers: the machines running these tests have 2 cores shared by everyone.
COMMON = dict(step_interval_s=0.1, threads=1, snapshot_every=50)   # batch_size 4: node_harness

__all__ = ["LabNode", "make_genesis", "converged", "wait_converged", "stop_producing", "alive_views",
           "union_digest", "wait_for", "PORT", "COMMON"]


def make_genesis(path: Path) -> Path:
    """The tests' genesis: tiny random model, built-in task, small records sealed quickly."""
    r = run_cli("init", "--model", "tiny", "--data", "builtin:sentiment", "--name", "netlab", "--out", path,
                "--hyper", "lr=0.0001", "--record-linger", "0.1", "--updates-per-record", "8",
                "--max-rate", "200")
    if r.returncode != 0:
        raise RuntimeError(f"onebyte init failed: {r.stderr}")
    return path


class LabNode(Node):
    """A daemon on lab host `name` (node_harness.Node, started through `ip netns exec`)."""

    def __init__(self, lab, name: str, root: Path, genesis: Path, peers: list[str], **fields):
        super().__init__(root, name, genesis, peers, **fields)
        self.lab = lab
        self.host = lab.hosts[name]
        self.fields["listen"] = f"0.0.0.0:{PORT}"
        self.write_config()
        self._node_id: str | None = None

    def start(self) -> "LabNode":
        self._err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(self.lab.exec_prefix(self.name) + ONEBYTE + ["run", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=self._err)
        return self

    @property
    def addr(self) -> str:
        """Where others reach it: its host address (inside address for a host behind NAT)."""
        return f"{self.host.ip}:{PORT}"

    @property
    def node_id(self) -> str:
        if self._node_id is None:
            self._node_id = self.status()["node_id"]
        return self._node_id

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def try_status(self) -> dict | None:
        try:
            return self.status()
        except (DaemonUnreachable, OSError):
            return None


def stop_producing(nodes) -> None:
    for n in nodes:
        ans = request(n.socket, {"cmd": "stop_producing"}, timeout=120)
        assert ans["ok"], ans


def converged(nodes) -> str | None:
    """The common digest once every node holds the same version vector with nothing left to
    replay and every digest agrees; None before."""
    sts = [n.status() for n in nodes]
    vvs = {tuple(sorted(st["version_vector"]["by_origin"].items())) for st in sts}
    if len(vvs) != 1 or any(st["replay_backlog"] for st in sts):
        return None
    answers = [n.digest() for n in nodes]
    if len({(a["digest"], a["updates"]) for a in answers}) != 1:
        return None
    return answers[0]["digest"]


def wait_converged(nodes, timeout: float) -> tuple[str, float]:
    """(digest, seconds it took) once `converged`; AssertionError after `timeout`."""
    t0 = time.monotonic()
    digest = wait_for(lambda: converged(nodes), timeout, f"{len(nodes)} digests to agree", 0.5)
    return digest, time.monotonic() - t0


def nothing_lost(nodes) -> bool:
    """Every node holds exactly each origin's own steps (origins = these nodes)."""
    sts = [n.status() for n in nodes]
    own = {st["node_id"]: st["own_steps"] for st in sts if st["own_steps"]}
    return all(st["version_vector"]["by_origin"] == own for st in sts)


def alive_views(nodes) -> dict[str, set[str]]:
    """node name -> names of the other nodes it sees as alive (running nodes only)."""
    ids = {n.node_id: n.name for n in nodes}
    out = {}
    for n in nodes:
        st = n.try_status()
        if st is not None:
            out[n.name] = {ids[p["node_id"]] for p in st["peers"]
                           if p["state"] == "alive" and p["node_id"] in ids}
    return out
