"""Fused CPU replay kernel (numba): apply B (seed, coefficient) updates in one pass over the weights.

Layout: all trainable weights live in one flat fp32 buffer whose position == noise index
(docs/rng.md), so element i of the buffer takes bit i & 63 of noise word i >> 6.

Work is split into items (tensor t, element range [e0, e1)) that never cross a tensor and,
except at tensor edges, cover whole 64-element words. Per word, a 64-lane int32 accumulator
stays in registers while all B updates are added (one splitmix64 hash per update per word,
then 64 branch-free mask/and/subtract lanes that LLVM vectorises); the weights are read and
written once per batch, with one exact fp32 add per element:

    w[i] += float32(sum_u c[t, u] * z_u(i)) * quantum[t]      # exact: see docs/numerics.md
"""
import numpy as np
from numba import float32, int32, int64, njit, prange, uint64

from .rng import GAMMA, MIX1, MIX2

_GAMMA = np.uint64(GAMMA)
_MIX1 = np.uint64(MIX1)
_MIX2 = np.uint64(MIX2)
CHUNK = 64 * 256  # elements per work item: 64 KiB of weights, plenty of items for the threads


@njit(inline="always")
def _mix64(z):
    z = (z ^ (z >> uint64(30))) * _MIX1
    z = (z ^ (z >> uint64(27))) * _MIX2
    return z ^ (z >> uint64(31))


@njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _replay_kernel(flat, keys, coef_t, it_t, it_e0, it_e1, quantum, bound, bad):
    # flat [N] f32; keys [B] u64; coef_t [T, B] i32; items [I]; quantum/bound [T] f32; bad [I] i64
    nb = keys.shape[0]
    for it in prange(it_t.shape[0]):
        t = it_t[it]
        e0 = it_e0[it]
        e1 = it_e1[it]
        qt = quantum[t]
        bd = bound[t]
        # Every lane starts at sum(c) and each set noise bit subtracts 2c: c * (1 - 2 bit).
        s0 = int32(0)
        for u in range(nb):
            s0 += coef_t[t, u]
        acc = np.empty(64, np.int32)
        nbad = int64(0)
        for w in range(e0 >> 6, (e1 + 63) >> 6):
            for j in range(64):
                acc[j] = s0
            for u in range(nb):
                c2 = int32(2 * coef_t[t, u])
                if c2 == 0:
                    continue
                h = _mix64(keys[u] + uint64(w) * _GAMMA)
                for j in range(64):
                    acc[j] -= int32(-int64((h >> uint64(j)) & uint64(1))) & c2
            base = w * 64
            if base >= e0 and base + 64 <= e1:
                for j in range(64):
                    x = flat[base + j] + float32(acc[j]) * qt
                    flat[base + j] = x
                    nbad += int64(abs(x) >= bd)
            else:  # partial word at a tensor edge
                for i in range(max(e0, base), min(e1, base + 64)):
                    x = flat[i] + float32(acc[i - base]) * qt
                    flat[i] = x
                    nbad += int64(abs(x) >= bd)
        bad[it] = nbad


def make_items(offsets, sizes, chunk: int = CHUNK):
    """Work items (tensor, e0, e1): each tensor cut at global multiples of `chunk` elements."""
    ts, e0s, e1s = [], [], []
    for t, (o, n) in enumerate(zip(offsets.tolist(), sizes.tolist())):
        a, end = o, o + n
        while a < end:
            b = min(end, (a // chunk + 1) * chunk)
            ts.append(t)
            e0s.append(a)
            e1s.append(b)
            a = b
    return (np.array(ts, dtype=np.int64), np.array(e0s, dtype=np.int64), np.array(e1s, dtype=np.int64))


def replay_cpu(flat: np.ndarray, keys: np.ndarray, coef_t: np.ndarray, items, quantum, bound) -> np.ndarray:
    """Apply one batch in place; returns the tensor ids whose weights reached the bound."""
    assert flat.dtype == np.float32 and flat.flags.c_contiguous
    assert keys.dtype == np.uint64 and coef_t.dtype == np.int32 and coef_t.shape[1] == keys.shape[0]
    it_t, it_e0, it_e1 = items
    bad = np.zeros(it_t.shape[0], dtype=np.int64)
    _replay_kernel(flat, keys, coef_t, it_t, it_e0, it_e1, quantum, bound, bad)
    return np.unique(it_t[bad > 0])
