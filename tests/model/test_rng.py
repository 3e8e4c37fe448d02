"""onebyte-rng-v1 test vectors (docs/rng.md) against the spec, the torch oracle and both kernels."""
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onebyte.model import rng

sys.path.insert(0, str(Path(__file__).parent))  # the oracle lives next to the tests
import oracle  # noqa: E402
from onebyte.model.grid import Grid
from onebyte.model.noise import mask_words
from onebyte.model.replay_cpu import make_items, replay_cpu

DOC = Path(__file__).resolve().parents[2] / "docs" / "rng.md"


def _vectors():
    text = DOC.read_text()
    block = re.search(r"```test-vectors\n(.*?)```", text, re.S).group(1)
    out = {"signs": [], "word": [], "update_seed": [], "uniform53": []}
    for line in block.strip().splitlines():
        kind, *rest = line.split()
        if kind == "indices":
            out["indices"] = [int(x) for x in rest[0].split(",")]
        elif kind == "splitmix64_first":
            out[kind] = int(rest[0], 16)
        else:
            out[kind].append(rest)
    return out


V = _vectors()


def _expected(chars):
    return [1 if c == "+" else -1 for c in chars]


def test_vectors_present():
    assert len(V["indices"]) == len(V["signs"][0][1]) and len(V["signs"]) >= 5 and len(V["word"]) >= 4


def test_mixer_is_splitmix64():
    assert rng.mix64(rng.GAMMA) == V["splitmix64_first"]


@pytest.mark.parametrize("row", V["signs"], ids=lambda r: r[0])
def test_signs_spec_and_oracle(row):
    seed, want = int(row[0], 16), _expected(row[1])
    assert rng.noise_signs(seed, V["indices"]) == want
    got = oracle.signs(seed, torch.tensor(V["indices"], dtype=torch.int64)).tolist()
    assert got == want


@pytest.mark.parametrize("row", V["word"], ids=lambda r: f"{r[0]}:{r[1]}")
def test_words(row):
    seed, w, want = int(row[0], 16), int(row[1]), int(row[2], 16)
    assert rng.noise_word(seed, w) == want
    assert oracle.words(seed, torch.tensor([w])).item() == oracle.s64(want)


def test_update_seed_vectors():
    for swarm, origin, step, want in V["update_seed"]:
        assert rng.update_seed(bytes.fromhex(swarm), bytes.fromhex(origin), int(step)) == int(want, 16)


def test_uniform_vectors():
    domains = {"quant": rng.QUANT_DOMAIN, "coeff": rng.COEF_DOMAIN}
    for seed, dom, j, want in V["uniform53"]:
        assert rng.uniform(int(seed, 16), domains[dom], int(j)) == int(want) * 2.0 ** -53


def _one_tensor_grid(offset, n):
    # A grid whose quantum is 1.0 so the kernel writes the raw signs (no scaling).
    return Grid(names=["pad", "x"], shapes=[(offset,), (n,)], offsets=np.array([0, offset]),
                sizes=np.array([offset, n]), exps=np.array([24, 24]), quantum=np.ones(2, np.float32),
                eps_k=np.ones(2, np.int64))


@pytest.mark.parametrize("row", V["signs"], ids=lambda r: r[0])
def test_signs_numba_kernel(row):
    seed, want = int(row[0], 16), _expected(row[1])
    small = [i for i in V["indices"] if i < 1 << 21]  # keep the buffer small
    lo = 3  # the tensor starts mid-word: exercises the partial-word path
    g = _one_tensor_grid(lo, max(small) + 1 - lo)
    flat = np.zeros(g.total, np.float32)
    coef_t = np.ones((2, 1), np.int32)
    replay_cpu(np.zeros(g.total, np.int64), flat, np.array([rng.noise_key(seed)], np.uint64), coef_t,
               make_items(g.offsets, g.sizes), g.quantum, mask_words(g, None, 1.0), commit=True)
    assert [int(flat[i]) for i in small] == [w for i, w in zip(V["indices"], want) if i < 1 << 21]


@pytest.mark.parametrize("row", V["signs"][:2], ids=lambda r: r[0])
def test_signs_triton_interpreter(row):
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 in the environment before triton is imported "
                    "(tests/model/test_replay_triton.py runs it in a subprocess)")
    from onebyte.model.replay_triton import TritonReplay
    seed, want = int(row[0], 16), _expected(row[1])
    g = _one_tensor_grid(3, 200)
    flat = torch.zeros(g.total)
    TritonReplay(g, "cpu").launch(torch.zeros(g.total, dtype=torch.int64), flat,
                                  np.array([rng.noise_key(seed)], np.uint64), np.ones((2, 1), np.int32), True)
    assert [int(flat[i]) for i in V["indices"] if i < 203] == [w for i, w in zip(V["indices"], want) if i < 203]


def test_seeds_differ_and_are_balanced():
    # Guards against a degenerate mixer: 64k signs of adjacent seeds are ~half +1 and unrelated.
    idx = torch.arange(1 << 16, dtype=torch.int64)
    a, b = oracle.signs(1, idx).double(), oracle.signs(2, idx).double()
    assert abs(a.mean().item()) < 0.02 and abs(b.mean().item()) < 0.02
    assert abs((a * b).mean().item()) < 0.02


def test_update_seed_rejects_bad_step():
    with pytest.raises(ValueError, match="step"):
        rng.update_seed(bytes(32), bytes(16), -1)
