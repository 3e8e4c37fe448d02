"""Low-rank noise: a fused replay of many updates on a matrix is one exact integer GEMM.

For a 2-D tensor t [m, n] (offset o, rank r) update u moves the state by c_u U_u V_u^T, with
U_u [m, r] and V_u [n, r] in {+1, -1} (model/noise.py). Updates of one origin inside one
window share V, so a batch of B updates from G (origin, window) groups is

    delta = A V^T,   A [m, G r] = sum over the updates of group g of c_u U_u,   V [n, G r]

All entries are integers: A's are bounded by the batch's sum |c| (<= 2**24, plan_batches)
and delta's by r times that, so int64 arithmetic is exact in any order. The GEMM costs
m n G r multiply-adds however many updates the batch holds: replay cost follows the number
of distinct windows, not the number of updates. CPU: a numba kernel that adds A V^T to the
state row by row and writes the fp32 weights in the same pass; CUDA: an fp64 torch GEMM
(exact: every partial sum is an integer below 2**53; never TF32, bf16 or fp16).
"""
from __future__ import annotations

import numpy as np
import torch

from . import replay_cpu  # noqa: F401  (first: it points numba's cache at a writable folder)
from .grid import Grid, noise_keys

from numba import njit, prange  # noqa: E402  (after replay_cpu, see above)

_M64 = (1 << 64) - 1


def _s64(u: int) -> int:
    u &= _M64
    return u - (1 << 64) if u >= 1 << 63 else u


_GAMMA, _MIX1, _MIX2 = _s64(0x9E3779B97F4A7C15), _s64(0xBF58476D1CE4E5B9), _s64(0x94D049BB133111EB)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _lsr(z, 30)) * _MIX1      # int64 multiplication wraps modulo 2**64, like uint64
    z = (z ^ _lsr(z, 27)) * _MIX2
    return z ^ _lsr(z, 31)


def signs(keys: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """int64 [B, n]: z(seed_b, start + i) in {+1, -1} for noise keys [B] (int64 bits of mix64(seed ^ NOISE_DOMAIN))."""
    w0, w1 = start >> 6, (start + n - 1) >> 6
    w = torch.arange(w0, w1 + 1, dtype=torch.int64, device=keys.device)
    z = _mix64(keys[:, None] + w[None, :] * _GAMMA)                                  # [B, W]
    bits = (z[:, :, None] >> torch.arange(64, device=keys.device)) & 1                # [B, W, 64], LSB first
    lo = start - 64 * w0
    return 1 - 2 * bits.reshape(keys.shape[0], -1)[:, lo:lo + n]


def keys_tensor(seeds, device) -> torch.Tensor:
    return torch.from_numpy(noise_keys(seeds).view(np.int64)).to(device)


class LowRank:
    """The low-rank tensors of a replica and the exact replay of a batch onto them."""

    def __init__(self, grid: Grid, tensors: list[int], rank: int, device):
        self.grid, self.tensors, self.rank, self.device = grid, tensors, rank, device

    def factors(self, seeds, vseeds, coefs):
        """Per low-rank tensor t: (A int64 [m, G r], V int64 [n, G r]) of the batch.

        coefs: int64 [B, T] (quanta per update and tensor)."""
        uniq, group = np.unique(np.array([int(v) for v in vseeds], dtype=np.uint64), return_inverse=True)
        ku = keys_tensor(seeds, self.device)
        kv = keys_tensor(uniq, self.device)
        g = torch.from_numpy(group.astype(np.int64)).to(self.device)
        c = torch.from_numpy(np.ascontiguousarray(coefs)).to(self.device)
        r = self.rank
        for t in self.tensors:
            m, n = self.grid.shapes[t]
            o = int(self.grid.offsets[t])
            u = signs(ku, o, m * r) * c[:, t:t + 1]                                   # [B, m r]
            a = torch.zeros((len(uniq), m * r), dtype=torch.int64, device=self.device).index_add_(0, g, u)
            a = a.view(-1, m, r).permute(1, 0, 2).reshape(m, -1)                       # [m, G r]
            v = signs(kv, o, n * r).view(-1, n, r).permute(1, 0, 2).reshape(n, -1)    # [n, G r]
            yield t, a, v

    def apply(self, state: torch.Tensor, flat: torch.Tensor, seeds, vseeds, coefs, commit: bool) -> None:
        """state[t] + A V^T for every low-rank tensor: into the state (commit) and the weights."""
        for t, a, v in self.factors(seeds, vseeds, coefs):
            o, size = int(self.grid.offsets[t]), int(self.grid.sizes[t])
            qt = float(self.grid.quantum[t])
            if state.device.type == "cpu":
                _add_product(state.numpy(), flat.numpy(), o, a.numpy(), np.ascontiguousarray(v.numpy().T),
                             np.float32(qt), commit)
            else:
                s = state[o:o + size] + (a.double() @ v.double().T).view(-1).long()
                if commit:
                    state[o:o + size] = s
                flat[o:o + size] = s.float() * qt


@njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _add_product(state, flat, o, a, vt, qt, commit):
    # state[o + i n + j] += sum_k a[i, k] vt[k, j]: int64, exact; then the fp32 weight.
    m, kk = a.shape
    n = vt.shape[1]
    for i in prange(m):
        row = np.zeros(n, np.int64)
        for k in range(kk):
            c = a[i, k]
            if c != 0:
                for j in range(n):
                    row[j] += c * vt[k, j]
        base = o + i * n
        for j in range(n):
            s = state[base + j] + row[j]
            if commit:
                state[base + j] = s
            flat[base + j] = np.float32(s) * qt
