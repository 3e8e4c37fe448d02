"""Quantizer and coefficient rounding are unbiased (fixed seeds, statistical bounds), saturate, and are deterministic."""
import math
import random

import numpy as np
import pytest
import torch

from onebyte.model import Hyper, quantize
from onebyte.model.grid import build_grid, update_coefficients

N = 20000  # samples per mean: the rounding noise is at most 1/2 per sample, so 5 sigma ~ 0.018


@pytest.mark.parametrize("g", [0.0, 0.3, -0.3, 1.77, -12.345, 63.49, 0.01])
def test_quantizer_unbiased(g):
    q_scale = 0.5
    rnd = random.Random(1234)
    qs = np.array([quantize(g, rnd.getrandbits(64), q_scale) for _ in range(N)], dtype=np.float64)
    x = g / q_scale
    assert set(np.unique(qs)) <= {math.floor(x), math.floor(x) + 1}  # rounds to a neighbour only
    frac = x - math.floor(x)
    sigma = math.sqrt(max(frac * (1 - frac), 1e-12) / N)
    assert abs(qs.mean() - x) <= 5 * sigma + 1e-12


def test_quantizer_saturates_and_is_deterministic():
    assert quantize(1e9, 1, 0.5) == 127 and quantize(-1e9, 1, 0.5) == -127
    assert quantize(63.5, 7, 0.5) == 127 and quantize(63.4, 7, 0.5) in (126, 127)
    assert quantize(3.21, 99, 0.1) == quantize(3.21, 99, 0.1)
    with pytest.raises(ValueError, match="not finite"):
        quantize(float("nan"), 1, 0.5)


def test_coefficient_rounding_unbiased():
    # A learning rate far below one quantum per update must still move the weights on average.
    hyper = Hyper(lr=1e-9, q_scale=0.5)
    grid = build_grid(["a", "b"], [torch.full((4,), 0.3), torch.full((4,), 3.0)], hyper)
    rnd = random.Random(5)
    cs = np.array([update_coefficients(grid, hyper, rnd.getrandbits(64), 37, 1) for _ in range(N)], dtype=np.float64)
    for t in range(2):
        x = math.ldexp(-1e-9 * 37 * 0.5, 24 - int(grid.exps[t]))
        assert abs(x) < 1  # sub-quantum: plain rounding would give 0 forever
        frac = x - math.floor(x)
        assert abs(cs[:, t].mean() - x) <= 5 * math.sqrt(frac * (1 - frac) / N)


def test_lr_schedule():
    lin = Hyper(lr=1e-3, lr_schedule="linear", lr_decay_steps=100)
    assert lin.lr_at(1) == pytest.approx(0.99e-3) and lin.lr_at(100) == 0.0 and lin.lr_at(500) == 0.0
    assert Hyper(lr=2e-5).lr_at(10**9) == 2e-5
    grid = build_grid(["a"], [torch.ones(8)], lin)
    assert not update_coefficients(grid, lin, 1, 100, 100).any()  # decayed to zero: no move


def test_vectorised_uniforms_match_spec():
    from onebyte.model.grid import uniforms
    from onebyte.model.rng import COEF_DOMAIN, uniform
    for seed in (0, 1, 2**64 - 1, 0xDEADBEEF):
        assert uniforms([seed], COEF_DOMAIN, 300)[0].tolist() == [uniform(seed, COEF_DOMAIN, j) for j in range(300)]
