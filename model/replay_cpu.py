"""Fused CPU replay: apply B (seed, coefficient) updates in one pass over the weights.

Layout: the replica's int64 state and the fp32 weights the model reads are flat buffers
whose position == noise index (docs/rng.md), so element i takes bit i & 63 of noise word
i >> 6 (and of mask word i >> 6).

Work is split into items (tensor t, element range [e0, e1)) that never cross a tensor and,
except at tensor edges, cover whole 64-element words. Per word, a 64-lane int32 accumulator
takes all B updates (one splitmix64 hash per update per word, whose 64 bits become a lane
mask); the state and weights are read and written once per batch:

    s = state[i] + (mask_i ? sum_u c[t, u] * z_u(i) : 0)      # int64: exact, any order
    state[i] = s  (commit only);  w[i] = float32(s) * quantum[t]   # see docs/numerics.md

Two kernels compute exactly these bits:

- "simd" (model/replay_simd.py): the inner loop written as LLVM vector IR through numba
  internals; the fast one.
- "plain" (below): the same loops in ordinary `@njit` code, no numba internals; 2.4-4.7x
  slower (docs/performance.md), there so that a numba release which breaks the internals
  costs speed, not correctness.

By default ("auto") the first replay builds the simd kernel and checks it bit for bit
against the plain one on a small probe; if it cannot be built or disagrees, the plain kernel
is used from then on (logged once). ONEBYTE_REPLAY_KERNEL=simd|plain|auto, or the `kernel=`
argument, picks one explicitly.

The kernels index raw memory unchecked, so `replay_cpu` validates every argument first, once
per call, with real exceptions (not `assert`, which `python -O` removes).
"""
import functools
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger("onebyte.model.replay_cpu")

KERNELS = ("simd", "plain")
KERNEL_ENV = "ONEBYTE_REPLAY_KERNEL"


def _numba_cache_dir() -> None:
    """numba caches compiled kernels beside this file, else under $HOME; a service with a
    read-only install and no writable home (systemd ProtectSystem=strict + DynamicUser) has
    neither, and numba then refuses to compile a cache=True function at all. Point it at the
    service's cache or state directory, else a private temp folder. Must run before numba
    reads its configuration (its first import)."""
    if "NUMBA_CACHE_DIR" in os.environ or os.access(Path(__file__).parent, os.W_OK):
        return
    home = Path(os.environ.get("HOME", "/nonexistent"))
    if os.access(home, os.W_OK):
        return
    for var in ("CACHE_DIRECTORY", "STATE_DIRECTORY"):  # set by systemd for the unit
        if os.environ.get(var):
            os.environ["NUMBA_CACHE_DIR"] = str(Path(os.environ[var].split(":")[0]) / "numba")
            return
    os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="onebyte-numba-")


_numba_cache_dir()

import numpy as np  # noqa: E402
from numba import int64, njit, prange, uint64  # noqa: E402

from .rng import GAMMA, MIX1, MIX2  # noqa: E402

CHUNK = 64 * 256  # elements per work item: 64 KiB of weights, plenty of items for the threads

# uint64 constants: numba mixes uint64 with a plain int into float64, so every operand is uint64.
_GAMMA, _MIX1, _MIX2 = np.uint64(GAMMA), np.uint64(MIX1), np.uint64(MIX2)
_S27, _S30, _S31, _ONE = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(1)


@njit(inline="always")
def _word_sums_plain(acc, keys, crow, w):
    """acc[j] = sum_u crow[u] * (1 - 2 * bit j of mix64(keys[u] + w * GAMMA)), in int32."""
    wg = w * _GAMMA
    total = int64(0)
    for j in range(64):
        acc[j] = 0
    for u in range(keys.shape[0]):
        z = keys[u] + wg
        z = (z ^ (z >> _S30)) * _MIX1
        z = (z ^ (z >> _S27)) * _MIX2
        z = z ^ (z >> _S31)
        c = int64(crow[u])
        total += c
        for j in range(64):
            acc[j] -= (2 * c) * int64((z >> uint64(j)) & _ONE)
    for j in range(64):
        acc[j] += total  # int32 stores would wrap like the simd kernel's i32 lanes; plan_batches keeps |sum| <= 2**24


@njit(parallel=True, cache=True, boundscheck=False, nogil=True)
def _replay_plain(state, flat, keys, coef_t, it_t, it_e0, it_e1, quantum, mask, commit):
    # Same arguments and bits as replay_simd.replay_kernel; whole and partial words alike.
    for it in prange(it_t.shape[0]):
        t = it_t[it]
        e0 = it_e0[it]
        e1 = it_e1[it]
        qt = quantum[t]
        crow = coef_t[t]
        acc = np.empty(64, np.int32)
        for w in range(e0 >> 6, (e1 + 63) >> 6):
            base = w * 64
            _word_sums_plain(acc, keys, crow, uint64(w))
            m = mask[w]
            for i in range(max(e0, base), min(e1, base + 64)):
                s = state[i]
                if (m >> uint64(i - base)) & _ONE:
                    s += int64(acc[i - base])
                if commit:
                    state[i] = s
                flat[i] = np.float32(s) * qt


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


def replay_cpu(state: np.ndarray, flat: np.ndarray, keys: np.ndarray, coef_t: np.ndarray, items, quantum,
               mask: np.ndarray, commit: bool, kernel: str | None = None) -> None:
    """One batch over the work items, in place: commit adds it to the int64 state and shows
    the state; commit=False shows state + batch and leaves the state as it was (a probe).

    mask: uint64 words, bit i & 63 of word i >> 6 set where weight i takes noise (all ones
    unless the genesis perturbs a sparse mask). kernel: "simd", "plain", or None for the
    process default (see the module docstring)."""
    it_t, it_e0, it_e1 = items
    _check_args(state, flat, keys, coef_t, it_t, it_e0, it_e1, quantum, mask)
    run = _kernel(kernel if kernel is not None else default_kernel())
    run(state, flat, keys, coef_t, it_t, it_e0, it_e1, quantum, mask, bool(commit))


def _check_args(state, flat, keys, coef_t, it_t, it_e0, it_e1, quantum, mask) -> None:
    """Every index the kernels follow, checked once per call: they run with boundscheck off
    and the simd kernel reads and writes through raw pointers."""
    def arr(name, a, dtype, ndim):
        if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim or not a.flags.c_contiguous:
            got = f"{a.dtype} {a.ndim}-d{'' if a.flags.c_contiguous else ' non-contiguous'}" \
                if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"replay_cpu: {name} must be a C-contiguous {ndim}-d {np.dtype(dtype)} array, got {got}")

    for name, a, dtype, ndim in (("state", state, np.int64, 1), ("flat", flat, np.float32, 1),
                                 ("keys", keys, np.uint64, 1), ("coef_t", coef_t, np.int32, 2),
                                 ("quantum", quantum, np.float32, 1), ("mask", mask, np.uint64, 1),
                                 ("items[0]", it_t, np.int64, 1),
                                 ("items[1]", it_e0, np.int64, 1), ("items[2]", it_e1, np.int64, 1)):
        arr(name, a, dtype, ndim)
    if not flat.flags.writeable or not state.flags.writeable:
        raise ValueError("replay_cpu: state or flat is read-only")
    if state.shape != flat.shape or mask.shape[0] != (flat.shape[0] + 63) // 64:
        raise ValueError(f"replay_cpu: state {state.shape}, flat {flat.shape} and mask {mask.shape} (one word "
                         f"per 64 weights) disagree")
    n_t = coef_t.shape[0]
    if coef_t.shape[1] != keys.shape[0] or quantum.shape[0] != n_t:
        raise ValueError(f"replay_cpu: shapes disagree: keys {keys.shape}, coef_t {coef_t.shape} (tensors, updates), "
                         f"quantum {quantum.shape}")
    if not it_t.shape == it_e0.shape == it_e1.shape:
        raise ValueError(f"replay_cpu: items arrays differ in length: {it_t.shape}, {it_e0.shape}, {it_e1.shape}")
    if it_t.size and (it_t.min() < 0 or it_t.max() >= n_t or it_e0.min() < 0 or it_e1.max() > flat.shape[0]
                      or (it_e0 > it_e1).any()):
        raise ValueError(f"replay_cpu: items out of range: need 0 <= tensor < {n_t} and "
                         f"0 <= e0 <= e1 <= {flat.shape[0]} (the flat buffer's length)")


def _kernel(name: str):
    if name == "plain":
        return _replay_plain
    if name == "simd":
        from .replay_simd import replay_kernel
        return replay_kernel
    raise ValueError(f"replay kernel {name!r}: expected one of {', '.join(KERNELS)}")


@functools.cache
def default_kernel() -> str:
    """The kernel replay_cpu uses when none is named: ONEBYTE_REPLAY_KERNEL, else "auto"."""
    choice = os.environ.get(KERNEL_ENV, "auto")
    if choice in KERNELS:
        return choice
    if choice != "auto":
        raise ValueError(f"{KERNEL_ENV}={choice!r}: expected auto, {' or '.join(KERNELS)}")
    why = _simd_fault()
    if why is None:
        return "simd"
    log.warning("CPU replay: the fast (simd) kernel is unavailable (%s); using the plain kernel: same bits, "
                "several times slower. A numba version outside pyproject.toml's range is the usual cause.", why)
    return "plain"


def _simd_fault() -> str | None:
    """None if the simd kernel builds and gives the plain kernel's bits on a small probe, else why not."""
    rng = np.random.default_rng(0)
    sizes = np.array([3, 200, 61, 700])  # tensors start and end mid-word and span whole words
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    items = make_items(offsets, sizes, chunk=256)
    keys = rng.integers(0, 2 ** 63, 5, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    coef_t = rng.integers(-1000, 1000, (len(sizes), len(keys)), dtype=np.int32)
    quantum = np.full(len(sizes), 2.0 ** -20, np.float32)
    n = int(sizes.sum())
    mask = rng.integers(0, 2 ** 63, (n + 63) // 64, dtype=np.uint64) * np.uint64(3)
    start = rng.integers(-2 ** 40, 2 ** 40, n).astype(np.int64)  # beyond 2**24: float32(k) rounds
    got, want = (start.copy(), np.zeros(n, np.float32)), (start.copy(), np.zeros(n, np.float32))
    try:
        for commit in (False, True):
            _kernel("simd")(*got, keys, coef_t, *items, quantum, mask, commit)
    except Exception as e:  # ImportError of numba internals, a typing or lowering error, ...
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    for commit in (False, True):
        _replay_plain(*want, keys, coef_t, *items, quantum, mask, commit)
    if not (np.array_equal(got[0], want[0]) and np.array_equal(got[1].view(np.uint32), want[1].view(np.uint32))):
        return "its result differs from the plain kernel's on the self-check probe"
    return None
