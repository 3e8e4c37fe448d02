"""Triton replay kernel == torch oracle bit for bit: on CPU tensors via TRITON_INTERPRET=1, and on CUDA."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onebyte.model import Hyper, Replica, Seeder
from onebyte.model.grid import build_grid, plan_batches, to_state, update_coefficients
from onebyte.model.noise import mask_of, mask_words

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
SIZES = [37, 1, 64, 130, 2500, 3, 1100]


def _case(seed, n_updates, fraction=1.0):
    hyper = Hyper(lr=3e-4)
    g = torch.Generator().manual_seed(seed)
    ts = [torch.randn(n, generator=g) * 0.1 for n in SIZES]
    grid = build_grid([f"t{i}" for i in range(len(ts))], ts, hyper)
    state = to_state(torch.cat(ts), grid)
    state[40] = (1 << 33) + 1   # past fp32's exact range: the shown weight rounds half to even
    rnd = random.Random(seed)
    ups = [(rnd.getrandbits(64), rnd.randint(-127, 127), rnd.randint(1, 99)) for _ in range(n_updates)]
    coefs = [update_coefficients(grid, hyper, s, q, st) for s, q, st in ups]
    return grid, state, [s for s, _, _ in ups], coefs, mask_words(grid, state.numpy(), fraction)


@pytest.mark.skipif(not INTERPRETED, reason="runs inside the TRITON_INTERPRET=1 subprocess below")
@pytest.mark.parametrize("n_updates,layout,words,fraction", [(1, "lanes_first", 128, 1.0), (6, "lanes_first", 128, 0.4),
                                                             (6, "lanes_first", 4, 1.0), (6, "words_first", 16, 0.4)])
def test_triton_interpreter_matches_oracle(n_updates, layout, words, fraction):
    pytest.importorskip("triton")
    from onebyte.model.replay_triton import TritonReplay
    grid, state, seeds, coefs, words_ = _case(n_updates, n_updates, fraction)
    want = oracle.replay(state, grid.offsets, grid.sizes, list(zip(seeds, coefs)), mask_of(words_, grid.total))
    got, flat = state.clone(), torch.zeros(grid.total)
    tr = TritonReplay(grid, "cpu", mask_words=words_, layout=layout, words=words)
    for _, keys, coef_t in plan_batches(grid, seeds, coefs, max_fused=4):
        tr.launch(got, flat, keys, coef_t, commit=True)
    assert torch.equal(got, want)
    assert torch.equal(flat.view(torch.int32),
                       oracle.show(want, grid.offsets, grid.sizes, grid.quantum).view(torch.int32))
    probe = torch.zeros(grid.total)
    _, keys, coef_t = plan_batches(grid, seeds[:1], coefs[:1], max_fused=4)[0]
    tr.launch(got, probe, keys, coef_t, commit=False)
    assert torch.equal(got, want)   # a probe leaves the state alone


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
    assert "6 passed" in p.stdout, p.stdout[-2000:]


KINDS = [{}, {"perturbation": "sparse", "sparse_fraction": 0.3}, {"perturbation": "lowrank", "lowrank_window": 3}]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_replica_matches_cpu(kind):
    rnd = random.Random(5)
    seeder = Seeder.for_hyper(b"s" * 32, Hyper(**kind))
    ups = [seeder.update(bytes([rnd.randrange(3)]) * 32, step, rnd.randint(-127, 127)) for step in range(1, 51)]
    cpu = Replica(oracle.tiny_llama(), Hyper(lr=2e-4, **kind), "cpu")
    gpu = Replica(oracle.tiny_llama(), Hyper(lr=2e-4, **kind), "cuda")
    assert cpu.digest() == gpu.digest()  # snapping agrees
    cpu.replay(ups)
    gpu.replay(ups[::-1])
    assert cpu.digest() == gpu.digest()
    assert torch.equal(cpu.flat.view(torch.int32), gpu.flat.cpu().view(torch.int32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout,words,num_warps", [("lanes_first", 128, 4), ("lanes_first", 64, 2),
                                                    ("words_first", 16, 4)])
def test_cuda_layouts_match_oracle(layout, words, num_warps):
    from onebyte.model.replay_triton import TritonReplay
    grid, state, seeds, coefs, words_ = _case(11, 40, 0.5)
    want = oracle.replay(state, grid.offsets, grid.sizes, list(zip(seeds, coefs)), mask_of(words_, grid.total))
    got, flat = state.cuda(), torch.zeros(grid.total, device="cuda")
    tr = TritonReplay(grid, torch.device("cuda"), mask_words=words_, layout=layout, words=words, num_warps=num_warps)
    for _, keys, coef_t in plan_batches(grid, seeds, coefs, max_fused=16):
        tr.launch(got, flat, keys, coef_t, commit=True)
    assert torch.equal(got.cpu(), want)
    assert torch.equal(flat.cpu().view(torch.int32),
                       oracle.show(want, grid.offsets, grid.sizes, grid.quantum).view(torch.int32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", [{}, {"probes": 3, "q_scale": 1 / 32, "perturbation": "lowrank"}])
def test_cuda_local_step_equals_cpu_replay(kind):
    """Probes and the own updates on the GPU == replaying the step's updates on the CPU."""
    batch = oracle.lm_batch(3)
    h = Hyper(**{"lr": 2e-4, **kind})
    seeder = Seeder.for_hyper(b"s" * 32, h)
    cpu, gpu = Replica(oracle.tiny_llama(), h, "cpu"), Replica(oracle.tiny_llama(), h, "cuda")
    step = 1
    for _ in range(3):
        probes = [(*seeder.seeds(b"g" * 32, s), s) for s in range(step, step + h.probes)]
        probes = [(seed, s, v) for seed, v, s in probes]
        qs, _ = gpu.local_step(oracle.lm_loss, batch.cuda(), probes)
        cpu.replay([(seed, q, s, v) for (seed, s, v), q in zip(probes, qs)])
        step += h.probes
    assert cpu.digest() == gpu.digest()
