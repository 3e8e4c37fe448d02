"""Low-rank noise: a fused replay of many updates on a matrix is one exact integer GEMM.

For a 2-D tensor t [m, n] (offset o, rank r) update u moves the state by c_u U_u V_u^T, with
U_u [m, r] and V_u [n, r] in {+1, -1} (model/noise.py). Updates of one origin inside one
window share V, so a batch of B updates from G (origin, window) groups is

    delta = A V^T,   A [m, G r] = sum over the updates of group g of c_u U_u,   V [n, G r]

All entries are integers: A's are bounded by the batch's sum |c| (<= 2**24, plan_batches)
and delta's by r times that, so the GEMM is exact in float64 in any summation order (every
partial sum is an integer below 2**53; never TF32, bf16 or fp16). It costs m n G r
multiply-adds however many updates the batch holds: replay cost follows the number of
distinct windows, not the number of updates.

CPU: numba builds A (one splitmix64 hash per 64 entries of U, as the per-weight kernel) and
V, then one numba pass per matrix computes each row of A V^T in registers, adds it to the
int64 state and writes the fp32 weights (delta is never stored). CUDA: the same steps in torch
int64/float64 on the device.
"""
from __future__ import annotations

import numpy as np
import torch

from . import replay_cpu  # noqa: F401  (first: it points numba's cache at a writable folder)
from .grid import Grid, noise_keys

from numba import int64, njit, prange, uint64  # noqa: E402  (after replay_cpu, see above)

_M64 = (1 << 64) - 1


def _s64(u: int) -> int:
    u &= _M64
    return u - (1 << 64) if u >= 1 << 63 else u


GAMMA, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_GAMMA, _MIX1, _MIX2 = np.uint64(GAMMA), np.uint64(MIX1), np.uint64(MIX2)
_S27, _S30, _S31, _ONE = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(1)


class LowRank:
    """The low-rank tensors of a replica and the exact replay of a batch onto them."""

    def __init__(self, grid: Grid, tensors: list[int], rank: int, device):
        self.grid, self.tensors, self.rank, self.device = grid, tensors, rank, torch.device(device)

    def apply(self, state: torch.Tensor, flat: torch.Tensor, seeds, vseeds, coefs, commit: bool) -> None:
        """state[t] + A V^T for every low-rank tensor: into the state (commit) and the weights.

        coefs: int64 [B, T] (quanta per update and tensor)."""
        uniq, group = np.unique(np.array([int(v) for v in vseeds], dtype=np.uint64), return_inverse=True)
        ku, kv = noise_keys(seeds), noise_keys(uniq)
        group = group.astype(np.int64).reshape(-1)
        coefs = np.ascontiguousarray(coefs, dtype=np.int64)
        r = self.rank
        for t in self.tensors:
            m, n = self.grid.shapes[t]
            o, size = int(self.grid.offsets[t]), int(self.grid.sizes[t])
            qt = float(self.grid.quantum[t])
            if self.device.type == "cpu":
                a = np.zeros((m * r, len(uniq)), np.float64)          # row i r + k: U[i, k] per group
                _group_sums(a, ku, np.ascontiguousarray(coefs[:, t]), group, o)
                v = np.zeros((n * r, len(uniq)), np.float64)
                _group_sums(v, kv, np.ones(len(uniq), np.int64), np.arange(len(uniq), dtype=np.int64), o)
                _add_product(state.numpy(), flat.numpy(), o, a.reshape(m, -1),   # [m, r G]: (k, g) in order
                             np.ascontiguousarray(v.reshape(n, -1).T), np.float32(qt), commit)
            else:
                a, v = torch_factors(ku, kv, coefs[:, t], group, o, m, n, r, self.device)
                s = state[o:o + size] + (a @ v.T).reshape(-1).long()
                if commit:
                    state[o:o + size] = s
                flat[o:o + size] = s.float() * qt


@njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _group_sums(out, keys, coef, group, start):
    # out[i, group[u]] += coef[u] * z(key_u, start + i) for every update u and row i < out.shape[0]
    rows, ngroups = out.shape
    w0 = start >> 6
    w1 = (start + rows - 1) >> 6
    for w in prange(w0, w1 + 1):
        lo = max(start, w * 64)
        hi = min(start + rows, w * 64 + 64)
        wg = uint64(w) * _GAMMA
        for u in range(keys.shape[0]):
            z = keys[u] + wg
            z = (z ^ (z >> _S30)) * _MIX1
            z = (z ^ (z >> _S27)) * _MIX2
            z = z ^ (z >> _S31)
            c = float(coef[u])
            g = group[u]
            for i in range(lo, hi):
                bit = (z >> uint64(i - w * 64)) & _ONE
                out[i - start, g] += -c if bit else c


@njit(parallel=True, cache=True, boundscheck=False, nogil=True, fastmath=False)
def _add_product(state, flat, o, a, vt, qt, commit):
    # Row i of the tensor: s = state + sum_k a[i, k] vt[k, :] (float64 holding exact integers,
    # |sum| <= r 2**24), then state = s (commit) and w = float32(s) * qt: one pass over the
    # weights, delta never materialised.
    m, kk = a.shape
    n = vt.shape[1]
    for i in prange(m):
        row = np.zeros(n, np.float64)
        for k in range(kk):
            c = a[i, k]
            if c != 0.0:
                for j in range(n):
                    row[j] += c * vt[k, j]
        base = o + i * n
        for j in range(n):
            s = state[base + j] + int64(row[j])
            if commit:
                state[base + j] = s
            flat[base + j] = np.float32(s) * qt


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _lsr(z, 30)) * _s64(MIX1)      # int64 multiplication wraps modulo 2**64, like uint64
    z = (z ^ _lsr(z, 27)) * _s64(MIX2)
    return z ^ _lsr(z, 31)


def torch_signs(keys: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """int64 [B, n]: z(seed_b, start + i) in {+1, -1} for noise keys [B] (int64 bits of mix64(seed ^ NOISE_DOMAIN))."""
    w0, w1 = start >> 6, (start + n - 1) >> 6
    w = torch.arange(w0, w1 + 1, dtype=torch.int64, device=keys.device)
    z = _mix64(keys[:, None] + w[None, :] * _s64(GAMMA))                                 # [B, W]
    bits = (z[:, :, None] >> torch.arange(64, device=keys.device)) & 1                # [B, W, 64], LSB first
    lo = start - 64 * w0
    return 1 - 2 * bits.reshape(keys.shape[0], -1)[:, lo:lo + n]


def torch_factors(ku: np.ndarray, kv: np.ndarray, coef: np.ndarray, group: np.ndarray, o: int, m: int, n: int,
                  r: int, device, chunk_entries: int = 1 << 25) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [m, r G], V [n, r G]) as float64 on `device`, the same layout as the CPU path.
    Updates go in chunks of at most chunk_entries sign entries (the bits are expanded to int64)."""
    kut = torch.from_numpy(ku.view(np.int64)).to(device)
    kvt = torch.from_numpy(kv.view(np.int64)).to(device)
    c = torch.from_numpy(np.ascontiguousarray(coef)).to(device)
    g = torch.from_numpy(group).to(device)
    a = torch.zeros((kvt.shape[0], m * r), dtype=torch.int64, device=device)
    step = max(1, chunk_entries // (m * r))
    for b in range(0, kut.shape[0], step):
        u = torch_signs(kut[b:b + step], o, m * r) * c[b:b + step, None]               # [b, m r]
        a.index_add_(0, g[b:b + step], u)
    a = a.T.reshape(m, r * kvt.shape[0]).double()                                         # [m, r G]
    v = torch_signs(kvt, o, n * r).T.reshape(n, r * kvt.shape[0]).double()
    return a, v
