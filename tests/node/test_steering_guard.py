"""The steering rule's runs and checkpoints (node/train/steering.py): a run is judged at W/2^c, ...,
W/2 and W steps, so an origin that steers and stops before W is judged on what it
published; honest q is never judged a breach; the verdict depends on the sequence alone."""
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
import oracle  # noqa: E402

from onebyte.model import Hyper, Replica, Seeder  # noqa: E402
from onebyte.node.train.steering import SteeringGuard  # noqa: E402

W, TARGET = 256, 77   # TARGET: a weight of the tiny model's first tensor


def stream(seeder, origin, steps, steer: bool):
    """q of |20..60|, its sign random (honest) or the sign of the noise at TARGET (steering)."""
    rnd = random.Random(3)
    qs = []
    for step in range(1, steps + 1):
        seed, _ = seeder.seeds(origin, step)
        q = rnd.randint(20, 60)
        z = int(oracle.signs(seed, torch.tensor([TARGET]))[0])
        qs.append(q * (1 if z >= 0 else -1) if steer else q * rnd.choice([-1, 1]))
    return qs


def guard(checkpoints):
    r = Replica(oracle.tiny_llama(), Hyper(lr=2e-4))
    seeder = Seeder.for_hyper(b"s" * 32, r.hyper)
    return SteeringGuard(r, seeder, W, 100, skip=b"me" * 16, checkpoints=checkpoints), seeder


def test_an_origin_that_steers_and_stops_early_is_judged_at_a_checkpoint():
    g, seeder = guard(checkpoints=3)
    assert g.points == {32, 64, 128, 256}
    evil = b"evil" * 8
    qs = stream(seeder, evil, 150, steer=True)   # stops at 150 steps, before W
    hits = [h for i in range(0, 150, 10) if (h := g.feed(evil, i + 1, qs[i:i + 10]))]
    # |q| ~ 40 aimed at one weight: S^2 / Q grows about 0.9 per step, past k2 = 100 by 128
    assert len(hits) == 1 and hits[0].step == 1 and hits[0].ratio > 100 and g.checks == 3
    assert list(hits[0].qs) == qs[:130]          # taken back from step 1: all it applied
    g0, _ = guard(checkpoints=0)                 # judged only at W: the 150 steps pass unjudged
    assert g0.points == {W} and g0.feed(evil, 1, qs) is None and g0.checks == 0


def test_honest_q_is_never_a_breach_and_each_checkpoint_is_checked_once():
    g, seeder = guard(checkpoints=3)
    good = b"good" * 8
    qs = stream(seeder, good, 2 * W, steer=False)
    assert g.feed(good, 1, qs[:50]) is None and g.feed(good, 51, qs[50:]) is None
    assert g.checks == 8 and g.checked == 2              # 32, 64, 128, 256 in each of two runs
    assert g.status()["checkpoints"] == [32, 64, 128, 256] and g.status()["largest_ratio"][good.hex()] < 40


def test_the_verdict_does_not_depend_on_how_the_steps_arrive():
    evil = b"evil" * 8
    verdicts = []
    for chunk in (1, 7, 100):
        g, seeder = guard(checkpoints=2)
        qs = stream(seeder, evil, 200, steer=True)
        hits = [h for i in range(0, 200, chunk) if (h := g.feed(evil, i + 1, qs[i:i + chunk]))]
        verdicts.append((hits[0].step, round(hits[0].ratio, 6), g.checks))
    assert len(set(verdicts)) == 1 and verdicts[0][0] == 1
