"""Fused CUDA replay kernel (Triton): the same bits as model/replay_cpu.py, on GPU tensors.

One program per work item (tensor t, element range [e0, e1) inside one chunk of
64 * WORDS elements, chunks aligned in the global noise index space). The program holds an
int32 accumulator tile, adds every update of the batch, then does one exact fp32 add per
weight (docs/numerics.md).

The tile is [64, WORDS], bit lane first: with Triton's default layout each thread owns one
word column, so it hashes its word once per update (one splitmix64 for 64 weights) and then
needs only shift, and, multiply-add per weight, all in 32-bit integers (the 64-bit word is
split in halves; the lane of each register is a compile-time constant). The transposed
orientation [WORDS, 64] made Triton hash each word in many threads and shift 64-bit values
per element. Triton is imported lazily: CPU-only installs never need it. Checked on CPU
through TRITON_INTERPRET=1 (tests/model/test_replay_triton.py) and on CUDA by
bench/gpu_check.py; bench/gpu_kernels.py times the layouts against each other.
"""
import numpy as np
import torch

WORDS = 128             # words (of 64 elements) per program, one per thread at 4 warps: items are
                        # cut at multiples of 64 * WORDS elements of the noise index space
NUM_WARPS = 4


def _kernel(layout: str):
    from .replay_triton_kernels import KERNELS
    return KERNELS[layout]


class TritonReplay:
    """Device-resident tables for one grid; apply(batch) runs the kernel on a CUDA flat buffer."""

    def __init__(self, grid, device, layout: str = "lanes_first", words: int = WORDS, num_warps: int = NUM_WARPS):
        from .replay_cpu import make_items
        items = make_items(grid.offsets, grid.sizes, 64 * words)
        self.device = device
        self.layout, self.words, self.num_warps = layout, words, num_warps
        self.it_t, self.it_e0, self.it_e1 = (torch.from_numpy(a).to(device) for a in items)
        self.quantum = torch.from_numpy(grid.quantum).to(device)
        self.bound = torch.from_numpy(grid.bound).to(device)
        self.bad = torch.zeros(self.it_t.shape[0], dtype=torch.int32, device=device)  # per item, accumulated

    def launch(self, flat: torch.Tensor, keys: np.ndarray, coef_t: np.ndarray) -> None:
        """Queue one batch on the device; overflow counts add up in self.bad until taken."""
        kernel = _kernel(self.layout)
        keys_t = torch.from_numpy(keys.view(np.int64)).to(self.device)
        coef = torch.from_numpy(np.ascontiguousarray(coef_t)).to(self.device)
        if self.it_t.shape[0]:
            kernel[(self.it_t.shape[0],)](flat, keys_t, coef, self.it_t, self.it_e0, self.it_e1, self.quantum,
                                          self.bound, self.bad, keys.shape[0], WORDS=self.words,
                                          num_warps=self.num_warps)

    def take_bad_tensors(self) -> np.ndarray:
        """Tensor ids with a weight at or past its bound since the last call (waits for the GPU)."""
        over = self.bad > 0
        if not bool(over.any()):
            return np.zeros(0, dtype=np.int64)
        ids = torch.unique(self.it_t[over]).cpu().numpy()
        self.bad.zero_()
        return ids

    def apply(self, flat: torch.Tensor, keys: np.ndarray, coef_t: np.ndarray) -> np.ndarray:
        """One batch, then its overflowing tensor ids."""
        self.launch(flat, keys, coef_t)
        return self.take_bad_tensors()
