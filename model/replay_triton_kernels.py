"""Triton kernels of model/replay_triton.py (imported only when a CUDA replica is built).

Two layouts of the same computation, bit for bit: `lanes_first` (the one replicas use) and
`words_first` (the first version, kept so bench/gpu_kernels.py can time them side by side).
"""
import triton
import triton.language as tl


@triton.jit
def _mix(key, wg):
    z = key + wg                                                     # splitmix64, mod 2**64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _item(it_t_ptr, it_e0_ptr, it_e1_ptr, it):
    """Work item `it`: tensor t and element range [e0, e1)."""
    return tl.load(it_t_ptr + it), tl.load(it_e0_ptr + it), tl.load(it_e1_ptr + it)


@triton.jit
def _write_back(state_ptr, flat_ptr, idx, inside, d, quantum_ptr, t, COMMIT: tl.constexpr):
    """s = state + d (int64, exact); state = s if COMMIT; w = float32(s) * quantum[t] (docs/numerics.md)."""
    s = tl.load(state_ptr + idx, mask=inside, other=0) + d.to(tl.int64)
    if COMMIT:
        tl.store(state_ptr + idx, s, mask=inside)
    tl.store(flat_ptr + idx, s.to(tl.float32) * tl.load(quantum_ptr + t), mask=inside)


@triton.jit
def lanes_first(state_ptr, flat_ptr, keys_ptr, coef_ptr, it_t_ptr, it_e0_ptr, it_e1_ptr, quantum_ptr, mask_ptr,
                nb, COMMIT: tl.constexpr, WORDS: tl.constexpr):
    it = tl.program_id(0)
    t, e0, e1 = _item(it_t_ptr, it_e0_ptr, it_e1_ptr, it)
    wi = (e0 // 64) + tl.arange(0, WORDS).to(tl.int64)              # [WORDS] word indices
    wg = wi.to(tl.uint64) * 0x9E3779B97F4A7C15
    lane = tl.arange(0, 64)                                          # [64] bit of the word
    high = (lane >= 32)[:, None]                                     # [64, 1] lane in the top half
    sh = (lane & 31).to(tl.uint32)[:, None]                          # [64, 1] shift inside the half
    acc = tl.zeros([64, WORDS], dtype=tl.int32)                      # sum_u -2 c_u bit_u(i)
    csum = 0                                                         # sum_u c_u
    for u in range(nb):
        key = tl.load(keys_ptr + u).to(tl.uint64, bitcast=True)     # keys travel as int64 bits
        c = tl.load(coef_ptr + t * nb + u)                           # int32 coefficient (quanta)
        z = _mix(key, wg)                                            # [WORDS] one hash per word
        lo = z.to(tl.uint32)[None, :]
        hi = (z >> 32).to(tl.uint32)[None, :]
        bit = ((tl.where(high, hi, lo) >> sh) & 1).to(tl.int32)      # [64, WORDS]
        acc += bit * (-2 * c)
        csum += c
    idx = wi[None, :] * 64 + lane[:, None].to(tl.int64)              # [64, WORDS] element index
    inside = (idx >= e0) & (idx < e1)
    m = tl.load(mask_ptr + wi, mask=wi * 64 < e1, other=0).to(tl.uint64, bitcast=True)
    mbit = ((tl.where(high, (m >> 32).to(tl.uint32)[None, :], m.to(tl.uint32)[None, :]) >> sh) & 1).to(tl.int32)
    _write_back(state_ptr, flat_ptr, idx, inside, (acc + csum) * mbit, quantum_ptr, t, COMMIT)


@triton.jit
def words_first(state_ptr, flat_ptr, keys_ptr, coef_ptr, it_t_ptr, it_e0_ptr, it_e1_ptr, quantum_ptr, mask_ptr,
                nb, COMMIT: tl.constexpr, WORDS: tl.constexpr):
    # The first kernel (kept to be timed against): tile [WORDS, 64], 64-bit shift per element.
    it = tl.program_id(0)
    t, e0, e1 = _item(it_t_ptr, it_e0_ptr, it_e1_ptr, it)
    wi = (e0 // 64) + tl.arange(0, WORDS).to(tl.int64)
    lane = tl.arange(0, 64).to(tl.int64)
    idx = wi[:, None] * 64 + lane[None, :]
    inside = (idx >= e0) & (idx < e1)
    acc = tl.zeros([WORDS, 64], dtype=tl.int32)
    wg = wi.to(tl.uint64) * 0x9E3779B97F4A7C15
    for u in range(nb):
        key = tl.load(keys_ptr + u).to(tl.uint64, bitcast=True)
        c = tl.load(coef_ptr + t * nb + u)
        z = _mix(key, wg)
        bit = ((z[:, None] >> lane[None, :].to(tl.uint64)) & 1).to(tl.int32)
        acc += c - 2 * c * bit
    m = tl.load(mask_ptr + wi, mask=wi * 64 < e1, other=0).to(tl.uint64, bitcast=True)
    mbit = ((m[:, None] >> lane[None, :].to(tl.uint64)) & 1).to(tl.int32)
    _write_back(state_ptr, flat_ptr, idx, inside, acc * mbit, quantum_ptr, t, COMMIT)


KERNELS = {"lanes_first": lanes_first, "words_first": words_first}
