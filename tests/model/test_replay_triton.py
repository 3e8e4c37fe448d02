"""Triton replay kernel == torch oracle bit for bit: on CPU tensors via TRITON_INTERPRET=1, and on CUDA."""
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onebyte.model import Hyper, Replica
from onebyte.model.grid import build_grid, plan_batches, snap_, update_coefficients

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
SIZES = [37, 1, 64, 130, 2500, 3, 1100]


def _case(seed, n_updates):
    hyper = Hyper(lr=3e-4)
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(n, generator=g) * 0.1 for n in SIZES]
    grid = build_grid([f"t{i}" for i in range(len(ts))], ts, hyper)
    flat = torch.cat(ts)
    snap_(flat, grid)
    rnd = random.Random(seed)
    ups = [(rnd.getrandbits(64), rnd.randint(-127, 127), rnd.randint(1, 99)) for _ in range(n_updates)]
    coefs = [update_coefficients(grid, hyper, s, q, st) for s, q, st in ups]
    return grid, flat, [s for s, _, _ in ups], coefs


@pytest.mark.skipif(not INTERPRETED, reason="runs inside the TRITON_INTERPRET=1 subprocess below")
@pytest.mark.parametrize("n_updates,layout,words", [(1, "lanes_first", 128), (6, "lanes_first", 128),
                                                    (6, "lanes_first", 4), (6, "words_first", 16)])
def test_triton_interpreter_matches_oracle(n_updates, layout, words):
    pytest.importorskip("triton")
    from onebyte.model.replay_triton import TritonReplay
    grid, flat, seeds, coefs = _case(n_updates, n_updates)
    want = oracle.replay(flat, grid.offsets, grid.sizes, grid.quantum, list(zip(seeds, coefs)))
    got = flat.clone()
    tr = TritonReplay(grid, "cpu", layout=layout, words=words)
    for keys, coef_t in plan_batches(grid, seeds, coefs, max_fused=4):
        assert len(tr.apply(got, keys, coef_t)) == 0
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


@pytest.mark.skipif(not INTERPRETED, reason="runs inside the TRITON_INTERPRET=1 subprocess below")
def test_triton_interpreter_reports_overflow():
    pytest.importorskip("triton")
    from onebyte.model.replay_triton import TritonReplay
    grid, flat, _, _ = _case(0, 0)
    coef_t = np.zeros((len(SIZES), 1), np.int32)
    coef_t[4, 0] = (1 << 24) - 1  # the whole grid range on tensor 4: half its weights cross the bound
    tr = TritonReplay(grid, "cpu")
    assert tr.apply(flat.clone(), np.array([99], np.uint64), coef_t).tolist() == [4]
    assert tr.apply(flat.clone(), np.array([99], np.uint64), coef_t * 0).tolist() == []  # counts were taken


def test_triton_interpreter_subprocess():
    """Triton's interpreter must be chosen before triton is imported, hence a fresh process."""
    pytest.importorskip("triton")
    if INTERPRETED:
        pytest.skip("already interpreted")
    here = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here / "test_replay_triton.py"),
           str(here / "test_rng.py"), "-k", "triton_interpreter and not subprocess"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "7 passed" in p.stdout, p.stdout[-2000:]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_replica_matches_cpu():
    rnd = random.Random(5)
    ups = [(rnd.getrandbits(64), rnd.randint(-127, 127), rnd.randint(1, 99)) for _ in range(50)]
    cpu = Replica(oracle.tiny_llama(), Hyper(lr=2e-4), "cpu")
    gpu = Replica(oracle.tiny_llama(), Hyper(lr=2e-4), "cuda")
    assert cpu.digest() == gpu.digest()  # snapping agrees
    cpu.replay(ups)
    gpu.replay(ups[::-1])
    assert cpu.digest() == gpu.digest()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout,words,num_warps", [("lanes_first", 128, 4), ("lanes_first", 64, 2),
                                                    ("words_first", 16, 4)])
def test_cuda_layouts_match_oracle(layout, words, num_warps):
    from onebyte.model.replay_triton import TritonReplay
    grid, flat, seeds, coefs = _case(11, 40)
    want = oracle.replay(flat, grid.offsets, grid.sizes, grid.quantum, list(zip(seeds, coefs)))
    got = flat.cuda()
    tr = TritonReplay(grid, torch.device("cuda"), layout=layout, words=words, num_warps=num_warps)
    for keys, coef_t in plan_batches(grid, seeds, coefs, max_fused=16):
        assert len(tr.apply(got, keys, coef_t)) == 0
    assert torch.equal(got.cpu().view(torch.int32), want.view(torch.int32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_local_step_equals_cpu_replay():
    """Perturb, perturb back and update on the GPU == replaying the step's (seed, q, step) on the CPU."""
    batch = oracle.lm_batch(3)
    cpu = Replica(oracle.tiny_llama(), Hyper(lr=2e-4), "cpu")
    gpu = Replica(oracle.tiny_llama(), Hyper(lr=2e-4), "cuda")
    for step in range(1, 4):
        q, _ = gpu.local_step(oracle.lm_loss, batch.cuda(), seed=1000 + step, step=step)
        cpu.replay([(1000 + step, q, step)])
    assert cpu.digest() == gpu.digest()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_overflow_poisons_the_replica():
    from onebyte.model import GridOverflowError
    gpu = Replica(oracle.tiny_llama(), Hyper(lr=2e-4), "cuda")
    with pytest.raises(GridOverflowError):
        gpu._apply([7], [np.full(len(gpu.grid.names), (1 << 24) - 1, dtype=np.int64)])
    with pytest.raises(GridOverflowError):
        gpu.replay([(1, 1, 1)])  # stays poisoned
