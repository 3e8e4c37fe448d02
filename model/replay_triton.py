"""Fused CUDA replay kernel (Triton): the same bits as model/replay_cpu.py, on GPU tensors.

One program per work item (tensor t, element range [e0, e1) inside one chunk of
64 * WORDS elements, chunks aligned in the global noise index space). The program holds a
[WORDS, 64] int32 accumulator, adds every update of the batch (one splitmix64 per word),
then does one exact fp32 add per weight. Triton is imported lazily: CPU-only installs never
need it. Tested on CPU through TRITON_INTERPRET=1 (tests/model/test_replay_triton.py).
"""
import numpy as np
import torch

WORDS = 16              # words (of 64 elements) per program: a 1024-element tile
CHUNK = 64 * WORDS      # item boundaries in the noise index space
_kernel = None


def _build():
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(flat_ptr, keys_ptr, coef_ptr, it_t_ptr, it_e0_ptr, it_e1_ptr, quantum_ptr, bound_ptr,
               bad_ptr, nb, WORDS: tl.constexpr):
        it = tl.program_id(0)
        t = tl.load(it_t_ptr + it)
        e0 = tl.load(it_e0_ptr + it)
        e1 = tl.load(it_e1_ptr + it)
        qt = tl.load(quantum_ptr + t)
        bd = tl.load(bound_ptr + t)
        wi = (e0 // 64) + tl.arange(0, WORDS).to(tl.int64)              # [WORDS] word indices
        lane = tl.arange(0, 64).to(tl.int64)                             # [64] bit of the word
        idx = wi[:, None] * 64 + lane[None, :]                           # [WORDS, 64] element index
        mask = (idx >= e0) & (idx < e1)
        acc = tl.zeros([WORDS, 64], dtype=tl.int32)
        wu = wi.to(tl.uint64)
        for u in range(nb):
            key = tl.load(keys_ptr + u).to(tl.uint64, bitcast=True)     # keys travel as int64 bits
            c = tl.load(coef_ptr + t * nb + u)                           # int32 coefficient (quanta)
            z = key + wu * 0x9E3779B97F4A7C15                           # splitmix64, mod 2**64
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
            z = (z ^ (z >> 27)) * 0x94D049BB133111EB
            z = z ^ (z >> 31)
            bit = ((z[:, None] >> lane[None, :].to(tl.uint64)) & 1).to(tl.int32)
            acc += c - 2 * c * bit                                       # c * z_u(i), z = 1 - 2 bit
        x = tl.load(flat_ptr + idx, mask=mask, other=0.0)
        x = x + acc.to(tl.float32) * qt                                  # exact: docs/numerics.md
        tl.store(flat_ptr + idx, x, mask=mask)
        over = ((tl.abs(x) >= bd) & mask).to(tl.int32)
        tl.store(bad_ptr + it, tl.sum(tl.sum(over, axis=1), axis=0))

    return kernel


class TritonReplay:
    """Device-resident tables for one grid; apply(batch) runs the kernel on a CUDA flat buffer."""

    def __init__(self, grid, device):
        from .replay_cpu import make_items
        items = make_items(grid.offsets, grid.sizes, CHUNK)
        self.device = device
        self.it_t, self.it_e0, self.it_e1 = (torch.from_numpy(a).to(device) for a in items)
        self.quantum = torch.from_numpy(grid.quantum).to(device)
        self.bound = torch.from_numpy(grid.bound).to(device)

    def apply(self, flat: torch.Tensor, keys: np.ndarray, coef_t: np.ndarray) -> np.ndarray:
        global _kernel
        if _kernel is None:
            _kernel = _build()
        n_items = self.it_t.shape[0]
        bad = torch.zeros(n_items, dtype=torch.int32, device=self.device)
        keys_t = torch.from_numpy(keys.view(np.int64)).to(self.device)
        coef = torch.from_numpy(np.ascontiguousarray(coef_t)).to(self.device)
        if n_items:
            _kernel[(n_items,)](flat, keys_t, coef, self.it_t, self.it_e0, self.it_e1, self.quantum,
                                self.bound, bad, keys.shape[0], WORDS=WORDS)
        return torch.unique(self.it_t[bad > 0]).cpu().numpy()
