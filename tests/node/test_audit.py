"""Auditing peers' updates on this node's own data: a member that publishes q of the wrong sign
(here: one that trains on flipped labels) is flagged; honest members are not."""
import pytest
import torch

from onebyte.node.train.audit import MIN_SAMPLES, SUSPECT_BATCHES, SUSPECT_SPEEDUP, SUSPECT_Z, Audit


def test_z_flagging_and_evidence():
    a = Audit(interval_s=1.0, flag_z=4.0, skip=b"me")
    for i in range(MIN_SAMPLES * 4):
        a.record(b"good", [(i, 5)], 0.3 if i % 4 else -0.1)    # agrees 3 times in 4
        a.record(b"bad", [(i, 5)], -0.3 if i % 4 else 0.1)     # disagrees 3 times in 4
    assert a.flagged() == [b"bad"]
    st = a.status()
    assert st["origins"][b"bad".hex()]["z"] == pytest.approx(-2 * 16 / 8) and st["flagged"] == [b"bad".hex()]
    assert len(st["origins"][b"bad".hex()]["evidence"]) == 8
    a.record(b"bad", [(100, 5), (101, -7), (102, 2)], -0.5)
    assert st["origins"][b"bad".hex()]["evidence"][-1] == [63, 63, 1, 5, -0.3]
    assert a.status()["origins"][b"bad".hex()]["evidence"][-1] == [100, 102, 3, 14, -0.5]
    a.record(b"x", [(1, 0)], 1.0)
    a.record(b"x", [(2, 3)], 0.0)
    assert b"x" not in a.origins   # q or g of 0 says nothing


def test_the_weighted_score_counts_confident_measurements_of_large_steps_for_more():
    """24 confident measurements that contradict q among 40 near-zero ones of random sign: the
    sign test sees -3 (not flagged), the weighted score about -4.9 (flagged)."""
    a = Audit(interval_s=1.0, flag_z=4.0)
    for i in range(24):
        a.record(b"bad", [(i, 20)], -1.0)
    for i in range(40):
        a.record(b"bad", [(100 + i, 2)], 0.01 if i % 2 else -0.01)
    o = a.origins[b"bad"]
    assert o.z == pytest.approx(-3.0) and o.z_weighted < -4.8
    assert a.flagged() == [b"bad"] and a.status()["origins"][b"bad".hex()]["z_weighted"] < -4.8


def test_q_that_ignores_the_measurement_is_rarely_flagged_whatever_its_magnitudes():
    """Random signs against heavy-tailed step masses and |g|: Hoeffding's bound (exp(-8) per
    score) holds for the weighted score too; 2,000 such origins of 64 audits flag at most a handful."""
    import random
    rng = random.Random(7)
    a = Audit(interval_s=1.0, flag_z=4.0)
    for k in range(2000):
        for i in range(64):
            q = max(1, min(127, int(rng.paretovariate(1.2))))
            a.record(k.to_bytes(4, "big"), [(i, q)], rng.choice((-1, 1)) * rng.paretovariate(1.1))
    assert len(a.flagged()) <= 3


def test_one_audit_per_interval_in_turn_of_each_origins_updates_since_its_last():
    a = Audit(interval_s=2.0, skip=b"me", batch_max=4)
    for step in range(1, 7):
        a.offer(b"p1", step, 7)
    a.offer(b"me", 1, 7)
    a.offer(b"p2", 9, -3)
    seen = []

    def measure(origin, updates, batch_ids):
        seen.append((origin, updates))
        return 1.0
    assert a.run(measure, now=0.0) and not a.run(measure, now=1.0) and a.run(measure, now=2.0)
    # p1's newest 4 (batch_max) in one audit, then p2's one; nothing new since: nothing due
    assert seen == [(b"p1", [(3, 7), (4, 7), (5, 7), (6, 7)]), (b"p2", [(9, -3)])] and not a.due(now=10.0)
    a.offer(b"p2", 10, 1)
    assert a.run(measure, now=10.0) and seen[-1] == (b"p2", [(10, 1)])


def test_a_suspect_is_audited_faster_and_the_round_goes_on():
    """An origin whose score fell below -SUSPECT_Z gets SUSPECT_SPEEDUP audits per interval (of its
    new updates, when it has some); the round still gives every origin its turn."""
    a = Audit(interval_s=2.0, skip=b"me")
    for i in range(MIN_SAMPLES):
        a.record(b"bad", [(i, 5)], -1.0)          # z = -4: a suspect (and flagged)
        a.record(b"good", [(i, 5)], 1.0 if i % 2 else -1.0)
    assert a.suspects() == [b"bad"] and b"good" not in a.suspects()
    seen = []

    def measure(origin, updates, batch_ids):
        seen.append(origin)
        return 1.0 if origin == b"good" else -1.0
    t, step = 0.0, 100
    while t < 20.0:                           # ten intervals; both publish every 0.1 s
        step += 1
        a.offer(b"bad", step, 5)
        a.offer(b"good", step, 5)
        a.run(measure, now=t)
        t = round(t + 0.1, 6)
    assert seen.count(b"bad") == pytest.approx(10 * SUSPECT_SPEEDUP + 5, abs=2)   # + its turns in the round
    assert seen.count(b"good") == pytest.approx(5, abs=1)
    st = a.status()
    assert st["suspects"] == [b"bad".hex()] and st["origins"][b"bad".hex()]["suspect"]
    assert not st["origins"][b"good".hex()]["suspect"]


def test_a_suspect_without_new_updates_is_not_audited_again():
    a = Audit(interval_s=2.0)
    for i in range(MIN_SAMPLES):
        a.record(b"bad", [(i, 5)], -1.0 if i % 4 else 1.0)   # z = -8 / 4 = -2: just a suspect
    assert a.origins[b"bad"].score <= -SUSPECT_Z
    a.offer(b"bad", 50, 5)
    assert a.run(lambda o, u, b: -1.0, now=0.0)
    assert not a.due(now=0.6) and not a.run(lambda o, u, b: -1.0, now=0.6)
    a.offer(b"bad", 51, 5)
    assert a.due(now=0.6)


def _regression():
    """A linear model, MSE toward y = X w*, and data (flipped labels: y -> -y) for it."""
    from onebyte.model import Hyper, Replica
    torch.manual_seed(0)   # the data and the model's init only
    w_true = torch.randn(24)

    def data(n, flip=False):
        x = torch.randn(n, 24)
        return x, (x @ w_true) * (-1 if flip else 1)

    def loss_fn(model, batch):
        x, y = batch
        return float(((model(x).squeeze(-1) - y) ** 2).mean())
    return Replica(torch.nn.Linear(24, 1), Hyper(lr=1e-3, q_scale=0.05)), data, loss_fn


def test_the_measurement_along_a_signed_sum_of_noises_is_the_signed_sum_of_measurements():
    """The loss is quadratic in the weights, so the two-sided difference is exact and linear in
    the direction: g along n1 + n2 - n3 (only the signs of q count) equals g1 + g2 - g3, and
    the state is left untouched."""
    from onebyte.model import Seeder
    replica, data, loss_fn = _regression()
    batch, seeder = data(64), Seeder(b"s" * 32)
    ups = [seeder.update(b"o" * 16, step, q) for step, q in ((1, 1), (2, 5), (3, -2))]
    before = replica.state.clone()
    each = [replica.directional(loss_fn, batch, [u], held=False) for u in ups]
    together = replica.directional(loss_fn, batch, ups, held=False)
    assert together == pytest.approx(each[0] + each[1] + each[2], rel=1e-3, abs=1e-6)   # each[2] = -g3
    flipped = seeder.update(b"o" * 16, 3, 2)
    assert each[2] == pytest.approx(-replica.directional(loss_fn, batch, [flipped], held=False), rel=1e-6)
    assert torch.equal(replica.state, before)   # auditing never changes the weights
    with pytest.raises(ValueError):
        replica.directional(loss_fn, batch, [], held=False)


def test_updates_the_weights_hold_are_measured_at_the_weights_without_them():
    """An audit runs after the updates were applied: held=True measures where they started from
    (exactly: the state is integers), not after the step each took along its own noise."""
    from onebyte.model import Seeder
    replica, data, loss_fn = _regression()
    batch, seeder = data(64), Seeder(b"s" * 32)
    ups = [seeder.update(b"o" * 16, step, q) for step, q in ((1, 90), (2, -70), (3, 127))]
    before_step = replica.directional(loss_fn, batch, ups, held=False)
    replica.replay(ups)
    state = replica.state.clone()
    assert replica.directional(loss_fn, batch, ups, held=True) == before_step
    assert replica.directional(loss_fn, batch, ups, held=False) != before_step   # after the step: another point
    assert torch.equal(replica.state, state)


@pytest.mark.parametrize("per_audit", [1, 8])
def test_a_label_flipping_origin_is_flagged_on_real_measurements(per_audit):
    """Three origins measure q on their own data; one of them has its labels flipped (y -> -y).
    A fourth node audits their updates, one at a time or eight in one measurement, with
    Replica.directional on its own data: the flipper is flagged, the honest origins are not."""
    from onebyte.model import Seeder
    auditor, data, loss_fn = _regression()
    origins = {b"honest1" * 4: data(512), b"honest2" * 4: data(512), b"flipper" * 4: data(512, flip=True)}
    own = data(512)
    seeder, audit = Seeder(b"s" * 32), Audit(interval_s=1.0)
    for j in range(96 if per_audit == 1 else 24):
        rows = slice((j * 32) % 512, (j * 32) % 512 + 32)
        for origin, (x, y) in origins.items():
            updates = []
            for step in range(j * per_audit + 1, (j + 1) * per_audit + 1):
                seed, vseed = seeder.seeds(origin, step)
                g = auditor.directional(loss_fn, (x[rows], y[rows]), [(seed, 1, step, vseed)], held=False)   # the origin's g
                updates.append((step, max(-127, min(127, round(g / 0.05)))))
            updates = [(s, q) for s, q in updates if q]    # a q of 0 is never offered to the audit
            if not updates:
                continue
            ups = [seeder.update(origin, s, q) for s, q in updates]     # the auditor does not apply them
            audit.record(origin, updates, auditor.directional(loss_fn, (own[0][rows], own[1][rows]), ups, held=False))
    st = audit.status()
    assert audit.flagged() == [b"flipper" * 4], st
    assert all(st["origins"][o.hex()]["z"] > 1 for o in origins if o != b"flipper" * 4)   # they agree
    assert all(st["origins"][o.hex()]["z_weighted"] > 1 for o in origins if o != b"flipper" * 4)


def test_a_suspect_does_not_starve_the_round_when_audits_are_rare():
    """A worker busy with long steps calls the audit once a second: the round still audits
    every origin in turn, and the suspect takes the slots between."""
    a = Audit(interval_s=2.0)
    for i in range(MIN_SAMPLES):
        a.record(b"bad", [(i, 5)], -1.0)
    seen = []
    for t in range(60):
        for o in (b"bad", b"g1", b"g2"):
            a.offer(o, 100 + t, 3)
        a.run(lambda o, u, b: seen.append(o) or (-1.0 if o == b"bad" else 1.0), now=float(t))
    assert seen.count(b"g1") >= 9 and seen.count(b"g2") >= 9 and seen.count(b"bad") >= 30


def test_a_suspect_is_measured_on_more_of_our_batches_and_no_batch_twice():
    a = Audit(interval_s=2.0)
    for i in range(MIN_SAMPLES):
        a.record(b"bad", [(i, 5)], -1.0)
    drawn = []

    def measure(origin, updates, batch_ids):
        drawn.append((origin, list(batch_ids)))
        return -1.0 if origin == b"bad" else 1.0
    for t in range(4):
        a.offer(b"bad", 100 + t, 3)
        a.offer(b"good", 100 + t, 3)
        a.run(measure, now=float(t))
    assert [len(ids) for o, ids in drawn] == [SUSPECT_BATCHES if o == b"bad" else 1 for o, ids in drawn]
    every = [k for _, ids in drawn for k in ids]
    assert every == list(range(len(every)))      # consecutive, none reused
    assert a.batches_drawn == len(every)
