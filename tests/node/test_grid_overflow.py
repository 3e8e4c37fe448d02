"""Grid overflow is a state, not a crash: the worker stops producing and applying, keeps
taking the backlog (the loop keeps logging and serving), and reports it."""
import queue
import time

from onebyte.model.grid import GridOverflowError
from test_worker import PEER, FakeReplica, make_worker

from onebyte.node.worker import Failed, OwnUpdate


class OverflowingReplica(FakeReplica):
    """Overflows on the first replay holding a q of 127, like a pushed weight at its bound."""
    poisoned = None

    def replay(self, updates):
        if any(q == 127 for _, q, _ in updates):
            self.poisoned = "grid overflow: weights of w reached their bound 2**e"
            raise GridOverflowError(self.poisoned)
        super().replay(updates)


def wait_until(pred, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_overflow_in_replay_stops_applying_but_not_the_worker(tmp_path):
    w, posted, snaps, lg = make_worker(tmp_path, replica=OverflowingReplica(), max_steps=1000,
                                       min_step_interval_s=0.01)
    w.start()
    try:
        wait_until(lambda: w.stats.own_steps >= 2)
        w.backlog.extend([(PEER, 1, 3), (PEER, 2, 127)])
        wait_until(lambda: w.stats.state == "grid_overflow")
        steps = w.stats.own_steps
        w.backlog.extend([(PEER, s, 1) for s in range(3, 10)])
        wait_until(lambda: len(w.backlog) == 0 and w.stats.skipped_overflow == 7)
        assert w.is_alive()
        assert w.stats.grid_overflow.startswith("grid overflow")
        assert w.stats.own_steps == steps            # no local step after the overflow
        assert w.stats.state == "grid_overflow"
    finally:
        w.stop()
        w.join(30)
    msgs = []
    while not posted.empty():
        msgs.append(posted.get())
    assert not any(isinstance(m, Failed) for m in msgs)
    assert sum(isinstance(m, OwnUpdate) for m in msgs) == steps


def test_a_replica_poisoned_at_restore_starts_in_the_overflow_state(tmp_path):
    rep = OverflowingReplica()
    rep.poisoned = "grid overflow while restoring"
    w, posted, snaps, lg = make_worker(tmp_path, replica=rep)
    w.start()
    try:
        wait_until(lambda: w.stats.state == "grid_overflow")
        assert w.stats.own_steps == 0 and w.is_alive()
    finally:
        w.stop()
        w.join(30)
    assert snaps == []    # overflowed weights are never written as a snapshot
