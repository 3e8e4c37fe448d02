"""The fixed-point grid that makes the weights a pure function of (base, set of updates).

Per trainable tensor t: exponent e_t = max(ceil_log2(max|w|), grid_min_exp) + headroom_bits,
quantum 2**(e_t - 24). The replica's state is one int64 per weight, k, counting quanta: the
base is snapped onto the grid (k = round(w / quantum)) and every change (+-eps, an update) is
an integer number of quanta added to k. Integer addition is exact and commutes, so any order
and any batching gives the same k on any device; the fp32 weight the model reads is
float32(k) * quantum, a pure function of k. No number of updates a swarm can make reaches
2**63 (docs/numerics.md, "Why nothing can halt a replica"), so there is no bound to hit.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from .hyper import Hyper
from .rng import COEF_DOMAIN, GAMMA, MIX1, MIX2, NOISE_DOMAIN

MANTISSA = 24          # fp32 significand bits: |k| < 2**24 shows exactly; beyond, float32(k) rounds once
MAX_SUM = 1 << 24      # a fused pass may add at most this many quanta to one weight (int32 accumulators)


class GridError(ValueError):
    """The base weights cannot be put on a grid (non-finite, not float32, eps too fine, ...)."""


@dataclass
class Grid:
    names: list            # trainable tensor names in index order (sorted)
    shapes: list           # their shapes
    offsets: np.ndarray    # int64 [T]: first element index of each tensor in the noise index space
    sizes: np.ndarray      # int64 [T]
    exps: np.ndarray       # int64 [T]: exponent e_t; the base's largest weight is below 2**(e_t - headroom)
    quantum: np.ndarray    # float32 [T]: 2**(e_t - 24)
    eps_k: np.ndarray      # int64 [T]: eps in quanta, round-half-even(eps / quantum) >= 1

    @property
    def total(self) -> int:
        return int(self.sizes.sum())


def horizon_margin(hyper: Hyper) -> float:
    """How far honest noise may carry a weight within hyper.horizon_updates updates (0: none).

    Kept for genesis files that set it: it widens e_t, i.e. coarsens the quantum. Since the
    state became int64 no weight can overflow, so it guards nothing any more
    (docs/numerics.md). Float64 arithmetic: the same on every node."""
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
        # One update must fit the int32 accumulators of a fused pass on its own (plan_batches).
        if math.ldexp(hyper.max_step(), MANTISSA - e) >= MAX_SUM:
            raise GridError(f"lr={hyper.lr} with q_scale={hyper.q_scale}: one update moves tensor {name} by "
                            f"2**24 quanta or more (lower lr or q_scale)")
        exps.append(e)
        eps_k.append(k)
    exps = np.array(exps, dtype=np.int64)
    sizes = np.array([t.numel() for t in tensors], dtype=np.int64)
    return Grid(names=list(names), shapes=[tuple(t.shape) for t in tensors],
                offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes,
                sizes=sizes, exps=exps,
                quantum=np.array([math.ldexp(1.0, int(e) - MANTISSA) for e in exps], dtype=np.float32),
                eps_k=np.array(eps_k, dtype=np.int64))


@torch.no_grad()
def to_state(flat: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The base weights snapped onto the grid, as int64 quanta (round half to even).

    w / quantum is exact (a power of two; |w| < 2**(e - headroom) keeps it below 2**24) and
    torch.round is round-half-even on every backend, so all nodes snap the base alike."""
    state = torch.empty(flat.shape, dtype=torch.int64, device=flat.device)
    for i in range(len(grid.names)):
        o, n = int(grid.offsets[i]), int(grid.sizes[i])
        state[o:o + n] = torch.round(flat[o:o + n] / float(grid.quantum[i])).to(torch.int64)
    return state


def quanta_of(grid: Grid, device) -> torch.Tensor:
    """Per-element quantum, fp32 [N] (what the torch paths multiply the state by)."""
    q = torch.from_numpy(grid.quantum).to(device)
    return torch.repeat_interleave(q, torch.from_numpy(grid.sizes).to(device))


def update_coefficients(grid: Grid, hyper: Hyper, seed: int, q: int, step: int) -> np.ndarray:
    """Integer coefficient (in quanta) of update (seed, q, step) on every tensor: int64 [T]."""
    return update_coefficients_many(grid, hyper, [seed], [q], [step])[0]


def update_coefficients_many(grid: Grid, hyper: Hyper, seeds, qs, steps) -> np.ndarray:
    """Integer coefficients of updates [(seed, q, step)] on every tensor: int64 [B, T].

    The real step is -lr(step) * q * q_scale; in quanta of tensor t that is x_t (float64,
    exact power-of-two scaling). It is rounded stochastically with a uniform keyed by
    (seed, t), so E[c_t] = x_t: tiny learning rates on coarse grids are not rounded to 0.
    |x_t| < 2**24 always: build_grid refused a genesis where it could be larger.
    Vectorised over the batch: a Python loop over updates and tensors would cost as much
    as a fused pass."""
    delta = np.array([-hyper.lr_at(st) * q * hyper.q_scale for q, st in zip(qs, steps)], dtype=np.float64)
    x = np.ldexp(delta[:, None], (MANTISSA - grid.exps)[None, :])  # float64 [B, T], exact scaling
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


def noise_keys(seeds) -> np.ndarray:
    """Per-update noise key mix64(seed ^ NOISE_DOMAIN), uint64 [B] (docs/rng.md)."""
    return _mix64_np(np.array([int(s) for s in seeds], dtype=np.uint64) ^ np.uint64(NOISE_DOMAIN))


def plan_batches(grid: Grid, seeds, coefs, max_fused: int):
    """Split (seed, coefficient[T]) pairs into kernel batches: (first index, keys uint64 [B], coefT int32 [T, B]).

    A batch ends at max_fused updates or before any tensor's sum of |c| would exceed 2**24:
    the per-weight int32 sums of a batch then cannot wrap (docs/numerics.md).
    `coefs` is a sequence of int [T] rows or one int [B, T] array."""
    coefs = np.asarray(coefs, dtype=np.int64).reshape(len(seeds), len(grid.names))
    keys = noise_keys(seeds)
    batches, start = [], 0
    while start < len(keys):
        load = np.cumsum(np.abs(coefs[start:start + max_fused]), axis=0)  # [b, T] running sums
        fits = (load <= MAX_SUM).all(axis=1)
        n = max(1, int(np.argmin(fits)) if not fits.all() else len(fits))  # the first update always fits
        batches.append((start, np.ascontiguousarray(keys[start:start + n]),
                        np.ascontiguousarray(coefs[start:start + n].T.astype(np.int32))))
        start += n
    return batches
