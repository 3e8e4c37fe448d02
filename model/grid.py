"""The fixed-point grid that makes the weights a pure function of (base, set of updates).

Per trainable tensor t: bound 2**e_t with e_t = max(ceil_log2(max|w|), grid_min_exp) + headroom_bits,
quantum 2**(e_t - 24). Every weight is k * quantum with |k| < 2**24, so it is an exact fp32
value, and the sum of two such values that stays below the bound is exact too: additions
commute bit for bit, on any device. Every change (+-eps, update) is an integer multiple of
the quantum. docs/numerics.md has the full argument.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from .hyper import Hyper
from .rng import COEF_DOMAIN, GAMMA, MIX1, MIX2, NOISE_DOMAIN

MANTISSA = 24          # fp32 significand bits: integers below 2**24 are exact
MAX_SUM = 1 << 24      # a fused pass may add at most this many quanta to one weight (exact in fp32)


class GridError(ValueError):
    """The base weights cannot be put on a grid (non-finite, not float32, eps too fine, ...)."""


class GridOverflowError(ArithmeticError):
    """A weight reached its grid bound 2**e: exactness is lost, so the replica stops."""


@dataclass
class Grid:
    names: list            # trainable tensor names in index order (sorted)
    shapes: list           # their shapes
    offsets: np.ndarray    # int64 [T]: first element index of each tensor in the noise index space
    sizes: np.ndarray      # int64 [T]
    exps: np.ndarray       # int64 [T]: bound exponent e_t
    quantum: np.ndarray    # float32 [T]: 2**(e_t - 24)
    bound: np.ndarray      # float32 [T]: 2**e_t; |w| must stay strictly below
    eps_k: np.ndarray      # int64 [T]: eps in quanta, round-half-even(eps / quantum) >= 1

    @property
    def total(self) -> int:
        return int(self.sizes.sum())


def horizon_margin(hyper: Hyper) -> float:
    """How far honest noise may carry a weight within hyper.horizon_updates updates.

    Each update adds c_u z_u(i) to weight i with |c_u| <= s = max_step and z_u(i) = +-1 fresh
    for every update: the noise part of the sum is a martingale with increments <= 2s. The
    bound is >= 4 (max|w| + margin) with the default headroom, so noise alone overflows only
    past 3 x margin = 24 s sqrt(H): probability <= 2 exp(-72) per weight (Azuma-Hoeffding;
    docs/numerics.md). The gradient's own drift, the training itself, is not bounded here.
    Float64 arithmetic: the same on every node."""
    if hyper.horizon_updates == 0:
        return 0.0
    return 8.0 * hyper.max_step() * math.sqrt(hyper.horizon_updates)


def bound_exponent(maxabs: float, hyper: Hyper) -> int:
    """Smallest b with maxabs + margin < 2**b (exact via frexp), floored, plus the headroom."""
    maxabs = maxabs + horizon_margin(hyper)
    if maxabs == 0.0:
        b = hyper.grid_min_exp
    else:
        m, b = math.frexp(maxabs)  # maxabs = m * 2**b, 0.5 <= m < 1, so maxabs < 2**b
    return max(b, hyper.grid_min_exp) + hyper.headroom_bits


def build_grid(names, tensors, hyper: Hyper) -> Grid:
    """Grid for the given fp32 tensors (in index order). Deterministic in the tensor values."""
    exps, eps_k = [], []
    for name, t in zip(names, tensors):
        if t.dtype != torch.float32:
            raise GridError(f"trainable tensor {name} is {t.dtype}; onebyte needs float32 weights "
                            f"(load the model with dtype=torch.float32)")
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise GridError(f"trainable tensor {name} has non-finite values")
        maxabs = float(t.abs().max()) if t.numel() else 0.0
        e = bound_exponent(maxabs, hyper)
        k = round(math.ldexp(hyper.eps, MANTISSA - e))  # Python round: half to even, exact input
        if k < 1:
            raise GridError(f"eps={hyper.eps} is below one quantum (2**{e - MANTISSA}) of tensor {name}: "
                            f"its weights are too large (max |w| = {maxabs:.3g}) for this eps")
        exps.append(e)
        eps_k.append(k)
    exps = np.array(exps, dtype=np.int64)
    sizes = np.array([t.numel() for t in tensors], dtype=np.int64)
    return Grid(names=list(names), shapes=[tuple(t.shape) for t in tensors],
                offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes,
                sizes=sizes, exps=exps,
                quantum=np.array([math.ldexp(1.0, int(e) - MANTISSA) for e in exps], dtype=np.float32),
                bound=np.array([math.ldexp(1.0, int(e)) for e in exps], dtype=np.float32),
                eps_k=np.array(eps_k, dtype=np.int64))


@torch.no_grad()
def snap_(flat: torch.Tensor, grid: Grid) -> None:
    """Round every weight to the nearest grid point (half to even), in place.

    w / quantum and the product back are exact (powers of two), and torch.round is
    round-half-even on every backend, so all nodes snap the base identically."""
    for i in range(len(grid.names)):
        o, n = int(grid.offsets[i]), int(grid.sizes[i])
        seg = flat[o:o + n]
        q = float(grid.quantum[i])
        seg.copy_(torch.round(seg / q) * q)


def check_on_grid(flat: torch.Tensor, grid: Grid) -> None:
    """Raise GridError unless every weight is an in-bound grid point (used when loading a snapshot)."""
    for i, name in enumerate(grid.names):
        o, n = int(grid.offsets[i]), int(grid.sizes[i])
        seg = flat[o:o + n]
        q = float(grid.quantum[i])
        if not bool(torch.isfinite(seg).all()) or not bool((torch.round(seg / q) * q == seg).all()):
            raise GridError(f"tensor {name} is not on the replica's grid (different base model or hyper?)")
        if n and float(seg.abs().max()) >= float(grid.bound[i]):
            raise GridOverflowError(f"tensor {name} reaches its grid bound 2**{int(grid.exps[i])}")


def update_coefficients(grid: Grid, hyper: Hyper, seed: int, q: int, step: int) -> np.ndarray:
    """Integer coefficient (in quanta) of update (seed, q, step) on every tensor: int64 [T]."""
    return update_coefficients_many(grid, hyper, [seed], [q], [step])[0]


def update_coefficients_many(grid: Grid, hyper: Hyper, seeds, qs, steps) -> np.ndarray:
    """Integer coefficients of updates [(seed, q, step)] on every tensor: int64 [B, T].

    The real step is -lr(step) * q * q_scale; in quanta of tensor t that is x_t (float64,
    exact power-of-two scaling). It is rounded stochastically with a uniform keyed by
    (seed, t), so E[c_t] = x_t: tiny learning rates on coarse grids are not rounded to 0.
    Vectorised over the batch: a fused pass of 128 updates on a GPU takes a few ms, and a
    Python loop over updates and tensors would take as long again."""
    delta = np.array([-hyper.lr_at(st) * q * hyper.q_scale for q, st in zip(qs, steps)], dtype=np.float64)
    x = np.ldexp(delta[:, None], (MANTISSA - grid.exps)[None, :])  # float64 [B, T], exact scaling
    if x.size and not bool((np.abs(x) < MAX_SUM).all()):
        b, t = np.unravel_index(int(np.argmax(np.abs(x))), x.shape)
        raise GridOverflowError(f"update step {delta[b]:.3g} is {x[b, t]:.3g} quanta on tensor {grid.names[t]}: "
                                f"larger than the whole grid (lower lr or q_scale)")
    f = np.floor(x)
    u = uniforms(np.array([int(s) for s in seeds], dtype=np.uint64), COEF_DOMAIN, len(grid.names))
    return (f + (u < x - f)).astype(np.int64)  # x - f is exact


def uniforms(seeds: np.ndarray, domain: int, n: int) -> np.ndarray:
    """[[uniform(seed, domain, j) for j < n] for seed in seeds] vectorised: float64 [B, n].

    numpy uint64 arithmetic wraps modulo 2**64 like the spec (docs/rng.md)."""
    with np.errstate(over="ignore"):
        z = _mix64_np(np.asarray(seeds, dtype=np.uint64) ^ np.uint64(domain))[:, None]
        z = _mix64_np(z + np.arange(n, dtype=np.uint64)[None, :] * np.uint64(GAMMA))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))  # < 2**53: exact conversion


def _mix64_np(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
        return z ^ (z >> np.uint64(31))


def plan_batches(grid: Grid, seeds, coefs, max_fused: int):
    """Split (seed, coefficient[T]) pairs into kernel batches: (keys uint64 [B], coefT int32 [T, B]).

    A batch ends at max_fused updates or before any tensor's sum of |c| would exceed 2**24:
    then the per-weight integer sum of a batch is exact in fp32 (docs/numerics.md).
    `coefs` is a sequence of int [T] rows or one int [B, T] array."""
    coefs = np.asarray(coefs, dtype=np.int64).reshape(len(seeds), len(grid.names))
    keys = _mix64_np(np.array([int(s) for s in seeds], dtype=np.uint64) ^ np.uint64(NOISE_DOMAIN))  # noise_key
    batches, start = [], 0
    while start < len(keys):
        load = np.cumsum(np.abs(coefs[start:start + max_fused]), axis=0)  # [b, T] running sums
        fits = (load <= MAX_SUM).all(axis=1)
        n = max(1, int(np.argmin(fits)) if not fits.all() else len(fits))  # the first update always fits
        batches.append(_pack(keys[start:start + n], coefs[start:start + n]))
        start += n
    return batches


def _pack(keys, coefs):
    return np.ascontiguousarray(keys), np.ascontiguousarray(coefs.T.astype(np.int32))
