"""Perturbation kinds: how an update's noise is built from its seed (Hyper.perturbation).

    rademacher   z_i = sign(seed, i) for every trainable weight i (docs/rng.md)
    sparse       the same signs on a mask fixed by the base: per tensor, its
                 ceil(sparse_fraction * n) smallest-magnitude weights (ties: lower index)
    lowrank      per 2-D tensor t [m, n]: z = U V^T, U [m, r] = signs(seed, o_t + i r + k),
                 V [n, r] = signs(vseed, o_t + j r + k), r = lowrank_rank; vseed is shared by
                 an origin's steps in one window (rng.window_seed). Other tensors: per-weight signs.

Each kind is exact on the grid: every entry of the noise is an integer in [-r, r], so eps
and every coefficient times it are whole quanta. The mask comes from the grid-snapped base
(the int64 state before any update), never from current weights, which differ between
replicas in flight. Low-rank replay is an integer GEMM (model/lowrank.py).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .grid import Grid
from .hyper import Hyper


class Noise:
    """What a replica needs to know of its perturbation kind, fixed at construction."""

    def __init__(self, grid: Grid, hyper: Hyper, base_state: torch.Tensor):
        self.kind = hyper.perturbation
        self.rank = hyper.lowrank_rank
        # Tensors whose noise is U V^T (model/lowrank.py); the rest take per-weight signs.
        self.lowrank = [t for t, shape in enumerate(grid.shapes)
                        if self.kind == "lowrank" and len(shape) == 2] if self.kind == "lowrank" else []
        self.per_weight = [t for t in range(len(grid.names)) if t not in set(self.lowrank)]
        fraction = hyper.sparse_fraction if self.kind == "sparse" else 1.0
        self.mask_words = mask_words(grid, base_state.cpu().numpy(), fraction)
        self.perturbed = int(sum(min(int(n), math.ceil(fraction * int(n))) for n in grid.sizes))


def mask_words(grid: Grid, base: np.ndarray, fraction: float) -> np.ndarray:
    """uint64 words, one per 64 weights: bit i & 63 of word i >> 6 set where weight i is perturbed.

    fraction 1: every bit of the index space. Else per tensor the ceil(fraction * n)
    weights of smallest |k| (k: the snapped base in quanta, an integer, so the order is the
    same everywhere), ties broken by the lower index (a stable sort)."""
    total = grid.total
    bits = np.zeros(((total + 63) // 64) * 64, dtype=np.uint8)
    if fraction >= 1.0:
        bits[:total] = 1
    else:
        for o, n in zip(grid.offsets.tolist(), grid.sizes.tolist()):
            keep = min(n, math.ceil(fraction * n))
            order = np.argsort(np.abs(base[o:o + n]), kind="stable")[:keep]
            bits[o + order] = 1
    return np.packbits(bits, bitorder="little").view(np.uint64).copy()


def mask_of(words: np.ndarray, n: int) -> np.ndarray:
    """bool [n]: the weights a mask's words perturb (for torch paths and tests)."""
    return np.unpackbits(words.view(np.uint8), bitorder="little")[:n].astype(bool)
