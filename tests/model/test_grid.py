"""Grid construction, snapping, overflow detection and Hyper validation."""
import math

import numpy as np
import pytest
import torch

from onebyte.model import GridError, Hyper, HyperError
from onebyte.model.grid import MAX_SUM, bound_exponent, build_grid, plan_batches, to_state


def test_bound_exponent_and_quantum():
    h = Hyper(headroom_bits=2, grid_min_exp=-6)
    assert bound_exponent(0.5, h) == 0 + 2        # 0.5 < 2**0
    assert bound_exponent(0.49, h) == -1 + 2
    assert bound_exponent(1.0, h) == 1 + 2        # strict: 1.0 is not < 2**0
    assert bound_exponent(0.0, h) == -6 + 2       # floor for zero tensors
    g = build_grid(["w"], [torch.tensor([0.75, -0.1])], h)
    assert g.exps.tolist() == [2] and g.quantum[0] == 2.0 ** -22
    assert g.eps_k[0] == round(1e-3 / 2.0 ** -22)


def test_snap_is_round_half_even_in_quanta():
    h = Hyper()
    t = torch.randn(10000) * 0.3
    g = build_grid(["w"], [t], h)
    k = to_state(t, g)
    assert k.dtype == torch.int64 and (k.abs() < 2 ** 22).all()   # headroom 2: the base is 2**22 quanta at most
    back = k.to(torch.float32) * float(g.quantum[0])
    assert (back - t).abs().max() <= float(g.quantum[0]) / 2
    assert torch.equal(to_state(back, g), k)
    half = torch.tensor([2.5, 3.5, -2.5]) * float(g.quantum[0])
    assert to_state(half, g).tolist() == [2, 4, -2]


def test_grid_rejects_bad_weights():
    with pytest.raises(GridError, match="non-finite"):
        build_grid(["w"], [torch.tensor([1.0, float("inf")])], Hyper())
    with pytest.raises(GridError, match="below one quantum"):
        build_grid(["w"], [torch.tensor([1e5])], Hyper(eps=1e-3))


def test_update_larger_than_grid_is_refused_at_genesis():
    with pytest.raises(GridError, match="2\\*\\*24 quanta or more"):
        build_grid(["w"], [torch.ones(4)], Hyper(lr=1e3))


def test_batches_split_to_keep_sums_exact():
    g = build_grid(["w"], [torch.ones(4)], Hyper())
    big = np.array([MAX_SUM // 3 + 1])
    batches = plan_batches(g, [1, 2, 3, 4], [big, big, -big, big], max_fused=128)
    assert [(b[0], b[1].shape[0]) for b in batches] == [(0, 2), (2, 2)]
    assert [b[1].shape[0] for b in plan_batches(g, range(10), [np.array([1])] * 10, max_fused=4)] == [4, 4, 2]


@pytest.mark.parametrize("kw, msg", [
    (dict(lr=-1.0), "lr must be >= 0"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(eps=0.0), "eps must be > 0"),
    (dict(q_scale="x"), "q_scale must be a finite number"),
    (dict(lr_schedule="cosine"), "lr_schedule"),
    (dict(lr_schedule="linear"), "lr_decay_steps >= 1"),
    (dict(perturbation="gaussian"), "rademacher, lowrank, sparse"),
    (dict(lowrank_rank=0), "lowrank_rank"),
    (dict(sparse_fraction=0.0), "sparse_fraction"),
    (dict(probes=0), "probes"),
    (dict(rng="mt19937"), "rng must be"),
    (dict(headroom_bits=0), "headroom_bits must be in"),
    (dict(headroom_bits=2.5), "headroom_bits must be an integer"),
    (dict(trainable="("), "not a valid regex"),
    (dict(eps=0.1), "too large for grid_min_exp"),
    (dict(max_fused=0), "max_fused"),
])
def test_hyper_validation(kw, msg):
    with pytest.raises(HyperError, match=msg):
        Hyper(**kw)


def test_hyper_dict_roundtrip():
    h = Hyper(lr=3e-5, trainable=r".*mlp.*")
    assert Hyper.from_dict(h.to_dict()) == h
    with pytest.raises(HyperError, match="unknown hyper field"):
        Hyper.from_dict({"lr": 1e-5, "learning_rate": 2})
    assert math.isfinite(h.lr_at(5))
