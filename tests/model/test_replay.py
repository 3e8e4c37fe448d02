"""Fused replay: both numba kernels == torch oracle bit for bit; any order and chunking gives the same bytes."""
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onebyte.model import Hyper, Replica
from onebyte.model.grid import build_grid, plan_batches, snap_, update_coefficients
from onebyte.model.replay_cpu import make_items, replay_cpu

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402

# Sizes chosen so tensors start and end mid-word and one spans several work items.
SIZES = [37, 1, 64, 130, 5000, 3, 40000]


def _tensors(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * s for n, s in zip(SIZES, [0.1, 1.0, 0.02, 3.0, 0.05, 0.0, 0.2])]


def _random_updates(rnd, n):
    return [(rnd.getrandbits(64), rnd.randint(-127, 127), rnd.randint(1, 10_000)) for _ in range(n)]


@pytest.mark.parametrize("kernel", ["simd", "plain"])
@pytest.mark.parametrize("batch", [1, 3, 17])
def test_kernel_matches_oracle(batch, kernel):
    hyper = Hyper(lr=3e-4)
    ts = _tensors()
    grid = build_grid([f"t{i}" for i in range(len(ts))], ts, hyper)
    flat = torch.cat(ts)
    snap_(flat, grid)
    rnd = random.Random(batch)
    ups = _random_updates(rnd, batch)
    seeds = [s for s, _, _ in ups]
    coefs = [update_coefficients(grid, hyper, s, q, st) for s, q, st in ups]
    assert any(c.any() for c in coefs)  # the test would be vacuous with all-zero coefficients
    want = oracle.replay(flat, grid.offsets, grid.sizes, grid.quantum, list(zip(seeds, coefs)))
    got = flat.numpy().copy()
    for keys, coef_t in plan_batches(grid, seeds, coefs, max_fused=128):
        replay_cpu(got, keys, coef_t, make_items(grid.offsets, grid.sizes, chunk=1024), grid.quantum, grid.bound,
                   kernel=kernel)
    assert np.array_equal(got.view(np.uint32), want.numpy().view(np.uint32))
    assert not torch.equal(want, flat)


def _tiny_replica(**kw):
    return Replica(oracle.tiny_llama(), Hyper(lr=2e-4, **kw))


def test_permutation_and_chunking_invariance():
    rnd = random.Random(7)
    ups = _random_updates(rnd, 40)
    ref = _tiny_replica()
    ref.replay(ups)
    base = _tiny_replica().digest()
    assert ref.digest() != base
    for trial in range(4):
        order = ups[:]
        rnd.shuffle(order)
        r = _tiny_replica(max_fused=rnd.choice([1, 3, 8, 128]))
        i = 0
        while i < len(order):  # random chunking into replay() calls
            k = rnd.randint(1, 9)
            r.replay(order[i:i + k])
            i += k
        assert r.digest() == ref.digest()
        assert torch.equal(r.flat.view(torch.int32), ref.flat.view(torch.int32))


def test_update_and_its_negation_cancel_exactly():
    # On the grid, +c z then -c z restores the base bit for bit (fp32 would not guarantee it).
    r = _tiny_replica()
    before = r.flat.clone()
    seed = 12345
    c = update_coefficients(r.grid, r.hyper, seed, 90, 1)
    r._apply([seed], [c])
    assert not torch.equal(r.flat, before)
    r._apply([seed], [-c])
    assert torch.equal(r.flat.view(torch.int32), before.view(torch.int32))


def test_replica_replay_matches_oracle():
    r = _tiny_replica()
    base = r.flat.clone()
    ups = _random_updates(random.Random(3), 5)
    r.replay(ups)
    coefs = [(s, update_coefficients(r.grid, r.hyper, s, q, st)) for s, q, st in ups]
    want = oracle.replay(base, r.grid.offsets, r.grid.sizes, r.grid.quantum, coefs)
    assert torch.equal(r.flat.view(torch.int32), want.view(torch.int32))


def test_model_reads_the_flat_buffer():
    r = _tiny_replica()
    logits0 = r.model(input_ids=oracle.lm_batch()).logits.clone()
    r.replay([(1, 127, 1)])
    assert not torch.equal(r.model(input_ids=oracle.lm_batch()).logits, logits0)


@pytest.mark.parametrize("bad", [(1, 128, 1), (1, 0, 0), (-1, 3, 1), (1, 3), (1, 2.5, 1), "x"])
def test_replay_rejects_bad_updates(bad):
    r = _tiny_replica()
    with pytest.raises(ValueError, match="update"):
        r.replay([bad])
