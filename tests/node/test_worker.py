"""The worker thread with a fake replica: fused replay of the whole backlog before any local
step, exactly-once application, own updates logged before they are posted, snapshots."""

import queue

from onebyte.node.storage.log import UpdateLog
from onebyte.node.train.training import Training
from onebyte.node.train.worker import Digest, Evaluate, OwnUpdate, Replayed, StopProducing, Worker, WorkerSetup

ME = b"\x01" * 16
PEER = b"\x02" * 16


class FakeReplica:
    def __init__(self, probes=1):
        self.calls = []          # ("replay", [(seed, q, step, vseed)...]) | ("step", first step)
        self.applied = []
        self.hyper = type("H", (), {"probes": probes})()

    def replay(self, updates):
        self.calls.append(("replay", list(updates)))
        self.applied.extend(updates)

    def local_step(self, loss_fn, batch, probes, privatize=None):
        self.calls.append(("step", probes[0][1]))
        self.applied.extend((seed, 3, step, v) for seed, step, v in probes)
        return [3] * len(probes), 0.5

    def digest(self):
        return f"{len(self.applied):064x}"


def seed_of(origin, step):
    return hash((origin, step)) & 0xFFFF


class FakeSeeder:
    """model/rng.py Seeder's interface with a cheap seed."""

    def seeds(self, origin, step):
        return seed_of(origin, step), 0

    def probes(self, origin, first, n):
        return [(seed_of(origin, s), s, 0) for s in range(first, first + n)]

    def update(self, origin, step, q):
        return seed_of(origin, step), q, step, 0


def make_worker(tmp_path, **kw):
    posted = queue.Queue()
    snaps = []
    lg = UpdateLog(tmp_path / "u.log")
    training = dict(sample=lambda step: [step], loss_fn=None, evaluator=None)
    training.update({k: kw.pop(k) for k in list(kw) if k in training})
    args = dict(replica=FakeReplica(), node_id=ME, swarm_id=b"s" * 32, update_log=lg, applied_vv={},
                training=Training(**training), max_steps=3,
                min_step_interval_s=0.0, eval_every=0, snapshot=lambda r, vv, d: snaps.append(dict(vv)),
                snapshot_every=4, max_backlog=1000, post=posted.put, seeder=FakeSeeder())
    args.update(kw)
    return Worker(WorkerSetup(**args)), posted, snaps, lg


def test_backlog_is_replayed_in_one_call_before_local_steps(tmp_path):
    w, posted, snaps, lg = make_worker(tmp_path)
    # 5 peer updates are waiting before the worker starts: they go first, in one call
    w.backlog.extend([(PEER, s, 1) for s in range(1, 6)])
    w.start()
    own = []
    while len(own) < 3:
        msg = posted.get(timeout=30)
        if isinstance(msg, OwnUpdate):
            own.append(msg)
        else:
            assert isinstance(msg, Replayed)
    assert [(o.step, o.qs) for o in own] == [(1, (3,)), (2, (3,)), (3, (3,))]
    # duplicates and already-applied steps are skipped
    w.backlog.extend([(PEER, 5, 1), (PEER, 6, -1)])
    got = queue.Queue()
    ans = {"vv": {}}
    while ans["vv"].get(PEER.hex()) != 6:   # the worker picks the backlog up at its own pace
        assert w.submit(Digest(got.put))
        ans = got.get(timeout=30)
    w.stop()
    w.join(30)
    r = w.replica
    assert r.calls[0] == ("replay", [(seed_of(PEER, s), 1, s, 0) for s in range(1, 6)])
    assert [c for c in r.calls if c[0] == "step"] == [("step", 1), ("step", 2), ("step", 3)]
    assert len(r.applied) == 9                      # 6 peer + 3 own, each once
    assert lg.updates_vv() == {ME: 3}               # own updates were logged by the worker
    assert ans["vv"] == {ME.hex(): 3, PEER.hex(): 6}
    assert snaps and snaps[-1] == {ME: 3, PEER: 6}  # final snapshot covers everything applied
    assert w.stats.applied_replayed == 6 and w.stats.applied_own == 3 and w.stats.state == "stopped"


def test_max_backlog_bounds_one_fused_call(tmp_path):
    w, posted, snaps, lg = make_worker(tmp_path, max_backlog=4, sample=None)
    w.backlog.extend([(PEER, s, 1) for s in range(1, 11)])
    w.start()
    got = queue.Queue()
    w.submit(Digest(got.put))
    ans = got.get(timeout=30)
    while ans["updates"] < 10:
        w.submit(Digest(got.put))
        ans = got.get(timeout=30)
    w.stop()
    w.join(30)
    sizes = [len(c[1]) for c in w.replica.calls if c[0] == "replay"]
    assert sum(sizes) == 10 and max(sizes) <= 4


def test_stop_producing_ends_local_steps_but_not_replay(tmp_path):
    evals = []
    w, posted, snaps, lg = make_worker(tmp_path, max_steps=0, min_step_interval_s=0.05,
                                       evaluator=lambda n=None: evals.append(n) or {"accuracy": 1.0, "n": n})
    w.start()
    while not isinstance(posted.get(timeout=30), OwnUpdate):   # it is producing (max_steps=0: unlimited)
        pass
    got = queue.Queue()
    assert w.submit(StopProducing(got.put))
    stopped_at = got.get(timeout=30)["own_steps"]
    w.backlog.extend([(PEER, 1, 2)])             # peer updates are still replayed
    ans = {"vv": {}}
    while ans["vv"].get(PEER.hex()) != 1:
        assert w.submit(Digest(got.put))
        ans = got.get(timeout=30)
    assert w.submit(Evaluate(7, got.put))          # an evaluation of a chosen size
    assert got.get(timeout=30)["n"] == 7 and evals == [7]
    w.stop()
    w.join(30)
    steps = [c for c in w.replica.calls if c[0] == "step"]
    assert len(steps) == stopped_at and ans["vv"][ME.hex()] == stopped_at
    assert w.stats.state == "stopped"
