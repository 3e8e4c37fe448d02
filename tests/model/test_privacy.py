"""The private step (model/privacy.py, DP-ZO): each example's projected gradient clipped, the
sum noised from a secret generator, before quantization; replay never sees any of it."""
import numpy as np
import pytest
import torch

from onebyte.model import Hyper, Replica
from onebyte.model.data import Example, TaskSpec, make_loss_fn
from onebyte.model.load import load_model
from onebyte.model.privacy import Mechanism, Privatizer

SPEC = TaskSpec()
BATCH = [Example(t, i % 2) for i, t in enumerate(["a great film It was", "the worst movie ever It was",
                                                   "fine It was", "bad bad bad It was", "lovely It was"])]


def replica(**hyper):
    model, tok = load_model("tiny")
    return Replica(model, Hyper(lr=1e-3, q_scale=0.05, **hyper)), tok


class Capture:
    """A privatizer that records what it was given and what it returned."""
    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __call__(self, g):
        out = self.inner(g)
        self.seen.append((g.clone(), out))
        return out


def test_per_example_losses_average_to_the_batch_loss():
    r, tok = replica()
    fn = make_loss_fn(SPEC, tok)
    per = fn.per_example(r.model, BATCH)
    assert per.shape == (len(BATCH),) and float(per.mean()) == pytest.approx(fn(r.model, BATCH), rel=1e-6)
    lm = make_loss_fn(TaskSpec(kind="lm"), tok)
    assert lm.per_example(r.model, BATCH).shape == (len(BATCH),)


def test_without_noise_and_clip_the_private_g_is_the_spsa_g():
    r, tok = replica()
    fn = make_loss_fn(SPEC, tok)
    cap = Capture(Privatizer(Mechanism(clip=1e9, noise_multiplier=0.0, expected_batch=len(BATCH))))
    g_spsa, _ = r._step._spsa(fn, BATCH, (7, 1, 0))
    r.local_step(fn, BATCH, [(7, 1)], privatize=cap)
    g_examples, g = cap.seen[0]
    assert g == pytest.approx(g_spsa[0], rel=1e-6, abs=1e-9) and g == pytest.approx(float(g_examples.mean()))


def test_clip_bounds_each_example_and_noise_is_secret_and_before_quantization():
    r, tok = replica()
    fn = make_loss_fn(SPEC, tok)
    cap = Capture(Privatizer(Mechanism(clip=1e-6, noise_multiplier=0.0, expected_batch=len(BATCH))))
    r.local_step(fn, BATCH, [(9, 1)], privatize=cap)
    assert abs(cap.seen[0][1]) <= 1e-6
    qs = []
    for rng_seed in (1, 2):   # the same update seed, two generators: other noise, other q
        r2, _ = replica()
        p = Privatizer(Mechanism(clip=1.0, noise_multiplier=5.0, expected_batch=len(BATCH)),
                       np.random.default_rng(rng_seed))
        qs.append(r2.local_step(fn, BATCH, [(9, 1)], privatize=p)[0][0])
    assert qs[0] != qs[1]
    empty = Capture(Privatizer(Mechanism(clip=1.0, noise_multiplier=1.0, expected_batch=4.0),
                               np.random.default_rng(3)))
    (q,), loss = r.local_step(fn, [], [(11, 2)], privatize=empty)   # Poisson drew nobody: noise alone
    assert empty.seen[0][0].numel() == 0 and loss != loss


def test_a_peer_replaying_private_updates_is_bit_identical():
    a, tok = replica()
    b, _ = replica()
    fn = make_loss_fn(SPEC, tok)
    p = Privatizer(Mechanism(clip=0.5, noise_multiplier=1.0, expected_batch=4.0), np.random.default_rng(0))
    updates = []
    for step in range(1, 6):
        (q,), _ = a.local_step(fn, BATCH[:4], [(100 + step, step)], privatize=p)
        updates.append((100 + step, q, step))
    b.replay(updates)
    assert a.digest() == b.digest()


def test_a_private_step_is_two_sided_spsa_only():
    p = Privatizer(Mechanism(clip=1.0, noise_multiplier=1.0, expected_batch=4.0))
    r, tok = replica(probes=4, probe_baseline="mean")
    with pytest.raises(ValueError, match="two-sided SPSA"):
        r.local_step(make_loss_fn(SPEC, tok), BATCH, [(1, 1), (2, 2), (3, 3), (4, 4)], privatize=p)
    with pytest.raises(ValueError):
        Mechanism(clip=0.0, noise_multiplier=1.0, expected_batch=4.0)


def test_the_clip_summary_says_how_often_and_how_far_examples_exceed_c():
    p = Privatizer(Mechanism(clip=2.0, noise_multiplier=0.0, expected_batch=4.0))
    assert p.clip_summary is None                      # nothing seen yet
    p(torch.tensor([0.5, -1.0, 3.0, -8.0]))
    s = p.clip_summary
    assert s["clipped_fraction"] == 0.5 and s["examples"] == 4
    assert s["g_abs_p50"] == pytest.approx(2.0) and 3.0 < s["g_abs_p90"] <= 8.0
    p(torch.zeros(0))                                  # an empty Poisson batch changes nothing
    assert p.clip_summary == s
    for _ in range(2100):                              # a window: old examples leave
        p(torch.tensor([0.1, 0.1]))
    assert p.clip_summary["clipped_fraction"] == 0.0 and p.clip_summary["examples"] == 4096


def test_adaptive_clipping_finds_the_quantile_and_keeps_the_noise_multiplier():
    m = Mechanism(clip=0.1, noise_multiplier=1.0, expected_batch=32.0, clip_quantile=0.5)
    sigma_sum, sigma_b = m.noise_split()
    assert sigma_b == pytest.approx(1.6)                                  # B / 20 (it exceeds sigma)
    assert sigma_sum ** -2 + (2 * sigma_b) ** -2 == pytest.approx(1.0)    # one mechanism of sigma = 1
    assert Mechanism(1.0, 4.0, 32.0, 0.5).noise_split()[1] == 4.0         # sigma_b >= sigma
    assert Mechanism(1.0, 2.0, 32.0).noise_split() == (2.0, 0.0)          # fixed C: all noise on the sum
    data = np.random.default_rng(5)
    for gamma, want in ((0.5, 0.6745 * 3), (0.9, 1.6449 * 3)):            # quantiles of |N(0, 3^2)|
        p = Privatizer(Mechanism(0.1, 1.0, 32.0, gamma), np.random.default_rng(6))
        seen = []
        for _ in range(600):
            p(torch.from_numpy(data.normal(0.0, 3.0, 32)))
            seen.append(p.clip)
        assert np.mean(seen[-200:]) == pytest.approx(want, rel=0.15)
        assert p.clip_summary["clip"] == pytest.approx(p.clip, rel=1e-3)
