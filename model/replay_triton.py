"""Fused CUDA replay kernel (Triton): the same bits as model/replay_cpu.py, on GPU tensors.

One program per work item (tensor t, element range [e0, e1) inside one chunk of
64 * WORDS elements, chunks aligned in the global noise index space). The program holds an
int32 accumulator tile, adds every update of the batch, masks the lanes the genesis does not
perturb, adds the sum to the int64 state (commit) and writes float32(state) * quantum
(docs/numerics.md).

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
    """Device-resident tables for the per-weight tensors of one grid (`tensors`, indices into
    it; all of them by default) and its noise mask; launch() runs one batch."""

    def __init__(self, grid, device, tensors=None, mask_words=None, layout: str = "lanes_first",
                 words: int = WORDS, num_warps: int = NUM_WARPS):
        from .noise import mask_words as full_mask
        from .replay_cpu import make_items
        tensors = list(range(len(grid.names))) if tensors is None else list(tensors)
        items = make_items(grid.offsets[tensors], grid.sizes[tensors], 64 * words)
        self.device = device
        self.layout, self.words, self.num_warps = layout, words, num_warps
        self.it_t, self.it_e0, self.it_e1 = (torch.from_numpy(a).to(device) for a in items)
        self.quantum = torch.from_numpy(np.ascontiguousarray(grid.quantum[tensors])).to(device)
        words_ = full_mask(grid, None, 1.0) if mask_words is None else mask_words
        self.mask = torch.from_numpy(words_.view(np.int64)).to(device)

    def launch(self, state: torch.Tensor, flat: torch.Tensor, keys: np.ndarray, coef_t: np.ndarray,
               commit: bool) -> None:
        """Queue one batch on the device (coef_t: int32 [tensors, B])."""
        kernel = _kernel(self.layout)
        keys_t = torch.from_numpy(keys.view(np.int64)).to(self.device)
        coef = torch.from_numpy(np.ascontiguousarray(coef_t)).to(self.device)
        if self.it_t.shape[0]:
            kernel[(self.it_t.shape[0],)](state, flat, keys_t, coef, self.it_t, self.it_e0, self.it_e1,
                                          self.quantum, self.mask, keys.shape[0], COMMIT=bool(commit),
                                          WORDS=self.words, num_warps=self.num_warps)
