"""Disk full is a state, not a crash (docs/security.md, "Disk full"), on a real tmpfs.

The tests mount a small tmpfs in a temp dir (we are root in CI; elsewhere they skip and
say why), fill it with a filler file, and free it again by deleting the filler. Unit
tests that fake ENOSPC and short writes are in test_log.py.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from node_harness import ONEBYTE, Node, union_digest, wait_for
from onebyte.node.errors import DiskFull
from onebyte.node.storage.log import UpdateLog
from onebyte.node.storage.durable import atomic_write_bytes
from onebyte.node.storage.snapshot import POINTER, read_snapshot, write_snapshot

A = bytes(range(16))


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 16 MiB mounted at tmp_path/disk for the test, unmounted after."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        reason = f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or r.returncode})"
        print(reason)
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path) -> Path:
    """Take every free byte of the file system (big chunks, then single bytes)."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    f.write(b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return filler


def test_log_on_a_full_tmpfs_holds_then_lands_whole_entries(small_disk):
    p = small_disk / "updates.log"
    lg = UpdateLog(p)
    filler = fill(small_disk)
    step, held_from = 1, None
    while held_from is None:             # the log's last page fills up, then ENOSPC
        try:
            lg.append_updates(A, step, bytes([step % 100]) * 50)
        except DiskFull:
            held_from = step
        step += 50
    for _ in range(3):                   # later updates queue behind the held one
        with pytest.raises(DiskFull):
            lg.append_updates(A, step, bytes([1]) * 50)
        step += 50
    durable = held_from - 1
    assert lg.disk_full and lg.held == 4 and lg.updates_vv() == {A: durable}
    on_disk = UpdateLog(p, readonly=True)
    assert on_disk.truncated_bytes == 0 and on_disk.updates_vv() == {A: durable}   # whole entries only
    assert lg.retry() == [] and lg.disk_full
    filler.unlink()
    landed = lg.retry()
    assert [s for _, s, _ in landed] == list(range(held_from, step))
    assert not lg.disk_full and lg.held == 0
    lg.close()
    again = UpdateLog(p)
    assert again.truncated_bytes == 0 and again.updates_vv() == {A: step - 1}


class BigReplica:
    def __init__(self, size):
        self.size = size

    def save(self, path):
        Path(path).write_bytes(b"w" * self.size)


def test_snapshot_and_atomic_write_leave_no_temp_file(small_disk):
    snaps = small_disk / "snapshots"
    write_snapshot(snaps, BigReplica(1000), {A: 1}, "ab" * 32)
    filler = fill(small_disk)
    with pytest.raises(DiskFull):
        write_snapshot(snaps, BigReplica(1 << 20), {A: 2}, "cd" * 32)
    with pytest.raises(DiskFull):
        atomic_write_bytes(small_disk / "generation", b"x" * (1 << 16))
    assert read_snapshot(snaps).vv == {A: 1}                 # the previous snapshot is in force
    leftovers = [f.name for f in small_disk.rglob(".*")]
    assert leftovers == [] and sorted(f.name for f in snaps.iterdir()) == [
        POINTER, f"weights-{'ab' * 8}-1.safetensors"]
    filler.unlink()
    write_snapshot(snaps, BigReplica(1 << 20), {A: 2}, "cd" * 32)
    assert read_snapshot(snaps).vv == {A: 2}


def on_disk(node: Node, state_dir: Path) -> Node:
    """Point a node's state_dir at the small disk."""
    node.state_dir = state_dir
    node.fields["state_dir"] = str(state_dir)
    node.write_config()
    return node


def start_fails_cleanly(node: Node) -> str:
    r = subprocess.run(ONEBYTE + ["run", "--config", str(node.config)], capture_output=True, text=True,
                       timeout=180)
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "no space left" in r.stderr, r.stderr
    return r.stderr


def test_start_on_a_full_disk_is_one_clear_line(tmp_path, small_disk, genesis_path):
    fill(small_disk)
    n = on_disk(Node(tmp_path, "full", genesis_path, []), small_disk / "state")
    err = start_fails_cleanly(n)
    errors = [line for line in err.splitlines() if "no space left" in line]
    assert len(errors) == 1, err
    assert [f.name for f in small_disk.rglob("*tmp*")] == []


def test_daemon_stops_producing_while_full_and_resumes_on_its_own(tmp_path, small_disk, genesis_path):
    """Node A keeps its state on a tmpfs that fills up while B keeps producing: A stops
    producing, keeps answering, then, once space is freed, logs and replays what it missed,
    finishes its own steps, and ends with B's digest. Finally, a start on the full disk fails
    with one line."""
    b = Node(tmp_path, "b", genesis_path, [], max_steps=120, threads=1, step_interval_s=0.05).start()
    a = None
    try:
        b_addr = b.wait_ready()["listen"]
        a = on_disk(Node(tmp_path, "a", genesis_path, [b_addr], max_steps=40, threads=1,
                         step_interval_s=0.05, snapshot_every=10), small_disk / "state").start()
        a.wait_ready()
        wait_for(lambda: a.status()["own_steps"] >= 5 and a.status()["applied_replayed"] > 0, 120,
                 "A producing and replaying B")
        filler = fill(small_disk)
        full = wait_for(lambda: (st := a.status())["disk_full"] and st, 120, "A to report disk_full")
        assert full["log"]["disk_full_events"] == 1 and "no space" in full["log"]["disk_full_error"].lower()
        own_when_full = full["own_steps"]
        b_then = b.status()["own_steps"]
        # B goes on; A answers status and digest but takes no step while full
        wait_for(lambda: b.status()["own_steps"] >= min(b_then + 20, 120), 120, "B to make progress")
        st = a.status()
        assert st["disk_full"] and st["worker_state"] == "disk_full" and st["own_steps"] == own_when_full
        assert a.digest()["updates"] == st["applied_total"]
        filler.unlink()
        wait_for(lambda: not a.status()["disk_full"], 60, "A to leave the disk-full state")
        wait_for(lambda: b.status()["own_steps"] == 120 and a.status()["own_steps"] == 40, 240,
                 "both nodes to finish their steps")
        da = wait_for(lambda: (d := a.digest())["updates"] == 160 and d, 240, "A to hold all 160 updates")
        db = wait_for(lambda: (d := b.digest())["updates"] == 160 and d, 240, "B to hold all 160 updates")
        assert da["digest"] == db["digest"]
        assert a.terminate() == 0
        state = small_disk / "state"
        assert UpdateLog(state / "updates.log", readonly=True).truncated_bytes == 0
        assert union_digest([state], genesis_path) == (da["digest"], 160)
        assert "disk space available again" in a.stderr()
        # and a restart on the full disk: one clear line, no traceback, no temp file
        fill(small_disk)
        start_fails_cleanly(a)
        assert [f.name for f in state.rglob("*.tmp*")] == []
    finally:
        for n in (a, b):
            if n is not None:
                n.cleanup()


# --- the worker: an own step that cannot be logged is taken back out of the weights ----------

def test_own_step_that_does_not_fit_is_taken_back_exactly(tmp_path, monkeypatch):
    import queue

    import torch

    from onebyte.model import Hyper, Replica, Seeder
    from onebyte.node.train.training import Training
    from onebyte.node.train.worker import OwnUpdate, Worker, WorkerSetup

    me = b"\x01" * 16
    torch.manual_seed(0)   # model init only
    replica = Replica(torch.nn.Linear(40, 30), Hyper(lr=1e-3, q_scale=0.05))
    start = replica.digest()
    lg = UpdateLog(tmp_path / "u.log")
    real_write, refused = os.write, []

    def no_room_for_own(fd, data):   # ENOSPC for the first own entry, then room again
        if fd == lg._fd and not refused:
            refused.append(bytes(data))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", no_room_for_own)
    posted = queue.Queue()
    w = Worker(WorkerSetup(
        replica=replica, node_id=me, swarm_id=b"s" * 32, update_log=lg, applied_vv={},
        training=Training(sample=lambda step: step, loss_fn=lambda model, batch: (model.weight ** 2).sum() * batch),
        snapshot=lambda r, vv, d: None, post=posted.put, seeder=Seeder(b"s" * 32),
        max_steps=3, min_step_interval_s=0.0, eval_every=0, snapshot_every=0, max_backlog=100))
    assert w._maybe_step() == pytest.approx(1.0)   # the step ran, its update did not fit
    assert refused and refused[0][-1] != 0            # a real update (q != 0) was refused
    assert lg.disk_full and lg.updates_vv() == {}
    assert w.stats.state == "disk_full" and w.stats.own_steps == 0 and posted.empty()
    assert replica.digest() == start                   # bit-exact: the step is out of the weights
    assert w._maybe_step() == pytest.approx(1.0)       # no step while the state lasts
    assert lg.retry() == [] and not lg.disk_full        # room again (tmp_path has some)
    own = []
    while len(own) < 3:
        if w._maybe_step() is None:
            own.append(posted.get_nowait())
    assert all(isinstance(m, OwnUpdate) for m in own) and [m.step for m in own] == [1, 2, 3]
    torch.manual_seed(0)
    fresh = Replica(torch.nn.Linear(40, 30), Hyper(lr=1e-3, q_scale=0.05))
    fresh.replay([Seeder(b"s" * 32).update(o, s, q) for o, s, q in lg.updates_after({})])
    assert fresh.digest() == replica.digest()          # weights == base + exactly the logged updates
