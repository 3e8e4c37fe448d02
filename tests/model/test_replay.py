"""Fused replay: both numba kernels == torch oracle bit for bit; any order and chunking gives the same bytes;
low-rank replay (an integer GEMM) == the per-weight definition of the same noise; the sparse mask."""
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from onebyte.model import Hyper, Replica, Seeder
from onebyte.model.grid import build_grid, plan_batches, to_state, update_coefficients
from onebyte.model.noise import mask_of, mask_words
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
@pytest.mark.parametrize("fraction", [1.0, 0.3])
def test_kernel_matches_oracle(batch, kernel, fraction):
    hyper = Hyper(lr=3e-4)
    ts = _tensors()
    grid = build_grid([f"t{i}" for i in range(len(ts))], ts, hyper)
    state = to_state(torch.cat(ts), grid)
    state[5] = (1 << 40) + 3  # far past 2**24 quanta: float32(k) rounds (half to even), k stays exact
    words = mask_words(grid, state.numpy(), fraction)
    rnd = random.Random(batch)
    ups = _random_updates(rnd, batch)
    seeds = [s for s, _, _ in ups]
    coefs = [update_coefficients(grid, hyper, s, q, st) for s, q, st in ups]
    assert any(c.any() for c in coefs)  # the test would be vacuous with all-zero coefficients
    want = oracle.replay(state, grid.offsets, grid.sizes, list(zip(seeds, coefs)), mask_of(words, grid.total))
    got, flat = state.numpy().copy(), np.zeros(grid.total, np.float32)
    items = make_items(grid.offsets, grid.sizes, chunk=1024)
    for _, keys, coef_t in plan_batches(grid, seeds, coefs, max_fused=128):
        replay_cpu(got, flat, keys, coef_t, items, grid.quantum, words, commit=True, kernel=kernel)
    assert np.array_equal(got, want.numpy()) and not torch.equal(want, state)
    shown = oracle.show(want, grid.offsets, grid.sizes, grid.quantum)
    assert np.array_equal(flat.view(np.uint32), shown.numpy().view(np.uint32))
    # a probe (commit=False) shows state + batch and leaves the state alone
    probe = np.zeros(grid.total, np.float32)
    before = got.copy()
    _, keys, coef_t = plan_batches(grid, seeds[:1], coefs[:1], max_fused=128)[0]
    replay_cpu(got, probe, keys, coef_t, items, grid.quantum, words, commit=False, kernel=kernel)
    want1 = oracle.replay(torch.from_numpy(before), grid.offsets, grid.sizes, [(seeds[0], coefs[0])],
                          mask_of(words, grid.total))
    assert np.array_equal(got, before)
    assert np.array_equal(probe.view(np.uint32), oracle.show(want1, grid.offsets, grid.sizes,
                                                             grid.quantum).numpy().view(np.uint32))


def _tiny_replica(**kw):
    return Replica(oracle.tiny_llama(), Hyper(**{"lr": 2e-4, **kw}))


KINDS = [{}, {"perturbation": "sparse", "sparse_fraction": 0.3},
         {"perturbation": "lowrank", "lowrank_window": 4}, {"perturbation": "lowrank", "lowrank_rank": 3}]


def _seeded(rnd, n, window):
    seeder = Seeder(b"s" * 32, window)
    origins = [b"a" * 32, b"b" * 32, b"c" * 32]
    steps = {o: 0 for o in origins}
    out = []
    for _ in range(n):
        o = rnd.choice(origins)
        steps[o] += 1
        out.append(seeder.update(o, steps[o], rnd.randint(-127, 127)))
    return out


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.get("perturbation", "rademacher") + str(k.get("lowrank_rank", "")))
def test_permutation_and_chunking_invariance(kind):
    rnd = random.Random(7)
    window = kind.get("lowrank_window", 64) if kind.get("perturbation") == "lowrank" else 0
    ups = _seeded(rnd, 40, window)
    ref = _tiny_replica(**kind)
    ref.replay(ups)
    base = _tiny_replica(**kind).digest()
    assert ref.digest() != base
    for trial in range(3):
        order = ups[:]
        rnd.shuffle(order)
        r = _tiny_replica(max_fused=rnd.choice([1, 3, 8, 128]), **kind)
        i = 0
        while i < len(order):  # random chunking into replay() calls
            k = rnd.randint(1, 9)
            r.replay(order[i:i + k])
            i += k
        assert r.digest() == ref.digest()
        assert torch.equal(r.state, ref.state)
        assert torch.equal(r.flat.view(torch.int32), ref.flat.view(torch.int32))


@pytest.mark.parametrize("rank", [1, 2])
def test_lowrank_replay_equals_its_definition(rank):
    """The GEMM path == the noise written out per weight: U V^T on matrices, signs elsewhere."""
    r = _tiny_replica(perturbation="lowrank", lowrank_rank=rank, lowrank_window=3)
    base = r.state.clone()
    ups = _seeded(random.Random(5), 12, 3)
    r.replay(ups)
    want = base.clone()
    for seed, q, step, vseed in ups:
        c = update_coefficients(r.grid, r.hyper, seed, q, step)
        for t, (o, shape) in enumerate(zip(r.grid.offsets.tolist(), r.grid.shapes)):
            n = int(r.grid.sizes[t])
            if len(shape) == 2:
                z = oracle.lowrank_noise(seed, vseed, o, shape[0], shape[1], rank).reshape(-1)
            else:
                z = oracle.signs(seed, torch.arange(o, o + n)).to(torch.int64)
            want[o:o + n] += int(c[t]) * z
    assert r.noise.lowrank and r.noise.per_weight  # both paths ran
    assert torch.equal(r.state, want)
    shown = oracle.show(want, r.grid.offsets, r.grid.sizes, r.grid.quantum)
    assert torch.equal(r.flat.view(torch.int32), shown.view(torch.int32))


def test_lowrank_window_shares_v():
    s = Seeder(b"x" * 32, 4)
    vs = [s.seeds(b"o" * 32, step)[1] for step in range(1, 10)]
    assert vs[0] == vs[3] != vs[4] == vs[7] != vs[8]
    assert Seeder(b"x" * 32, 4).seeds(b"p" * 32, 1)[1] != vs[0]   # another origin, another V
    assert Seeder(b"x" * 32).seeds(b"o" * 32, 1)[1] == 0            # not low-rank: no V


def test_sparse_mask_depends_only_on_the_base():
    """The mask is fixed by the snapped base: a replica that applied updates, or loaded a
    snapshot, keeps the mask of the base; it holds the smallest |w|, ties by index."""
    kind = {"perturbation": "sparse", "sparse_fraction": 0.25}
    a = _tiny_replica(**kind)
    b = _tiny_replica(**kind)
    b.replay(_random_updates(random.Random(1), 30))
    assert np.array_equal(a.noise.mask_words, b.noise.mask_words)
    bits = mask_of(a.noise.mask_words, a.grid.total)
    for o, n in zip(a.grid.offsets.tolist(), a.grid.sizes.tolist()):
        k = a.state[o:o + n].abs()
        chosen = torch.from_numpy(bits[o:o + n])
        assert int(chosen.sum()) == -(-n // 4)
        if chosen.any() and (~chosen).any():
            assert k[chosen].max() <= k[~chosen].min()
    # ties (a zero tensor) go to the lowest indices
    g = build_grid(["z"], [torch.zeros(10)], Hyper())
    assert mask_of(mask_words(g, np.zeros(10, np.int64), 0.3), 10).tolist() == [True] * 3 + [False] * 7
    # weights outside the mask never move
    untouched = ~torch.from_numpy(bits)
    assert torch.equal(b.state[untouched], a.state[untouched]) and not torch.equal(b.state, a.state)


def test_update_and_its_negation_cancel_exactly():
    r = _tiny_replica()
    before = r.state.clone()
    r.replay([(12345, 90, 1)])
    assert not torch.equal(r.state, before)
    r.undo([(12345, 90, 1)])
    assert torch.equal(r.state, before)


def test_replica_replay_matches_oracle():
    r = _tiny_replica()
    base = r.state.clone()
    ups = _random_updates(random.Random(3), 5)
    r.replay(ups)
    coefs = [(s, update_coefficients(r.grid, r.hyper, s, q, st)) for s, q, st in ups]
    want = oracle.replay(base, r.grid.offsets, r.grid.sizes, coefs)
    assert torch.equal(r.state, want)
    assert torch.equal(r.flat.view(torch.int32),
                       oracle.show(want, r.grid.offsets, r.grid.sizes, r.grid.quantum).view(torch.int32))


def test_no_number_of_updates_halts_a_replica():
    """One weight steered in one direction for ever (the attack of issue 23) leaves the
    fp32 grid's old bound far behind: the replica keeps applying, exactly, in any order."""
    r = _tiny_replica(lr=1e-3, q_scale=0.5)
    ups = [(1, 127, step) for step in range(1, 3001)]   # the same seed: every weight walks one way
    r.replay(ups)
    big = r.state.abs().max().item()
    assert big > 1 << 25                                 # past fp32's exact range: the view rounds
    other = _tiny_replica(lr=1e-3, q_scale=0.5)
    for i in range(0, 3000, 700):
        other.replay(ups[i:i + 700][::-1])
    assert torch.equal(other.state, r.state) and other.digest() == r.digest()
    assert torch.isfinite(r.flat).all()


def test_model_reads_the_flat_buffer():
    r = _tiny_replica()
    logits0 = r.model(input_ids=oracle.lm_batch()).logits.clone()
    r.replay([(1, 127, 1)])
    assert not torch.equal(r.model(input_ids=oracle.lm_batch()).logits, logits0)


@pytest.mark.parametrize("bad", [(1, 128, 1), (1, 0, 0), (-1, 3, 1), (1, 3), (1, 2.5, 1), "x", (1, 2, 3, -4)])
def test_replay_rejects_bad_updates(bad):
    r = _tiny_replica()
    with pytest.raises(ValueError, match="update"):
        r.replay([bad])


def test_lowrank_cuda_path_factors_equal_the_cpu_path():
    """The CUDA path (torch int64/float64 on the device) builds the same A and V as the CPU
    path (numba); checked here on CPU tensors."""
    from onebyte.model.grid import noise_keys
    from onebyte.model.lowrank import _group_sums, torch_factors
    rnd = np.random.default_rng(4)
    seeds = rnd.integers(0, 2 ** 63, 9, dtype=np.uint64)
    vseeds = np.array([5, 7, 5, 9, 7, 7, 5, 9, 9], np.uint64)
    uniq, group = np.unique(vseeds, return_inverse=True)
    coef = rnd.integers(-1000, 1000, 9).astype(np.int64)
    m, n, r, o = 37, 70, 2, 129
    a = np.zeros((m * r, len(uniq)))
    _group_sums(a, noise_keys(seeds), coef, group.astype(np.int64), o)
    v = np.zeros((n * r, len(uniq)))
    _group_sums(v, noise_keys(uniq), np.ones(len(uniq), np.int64), np.arange(len(uniq), dtype=np.int64), o)
    ta, tv = torch_factors(noise_keys(seeds), noise_keys(uniq), coef, group.astype(np.int64), o, m, n, r, "cpu")
    assert torch.equal(ta, torch.from_numpy(a).view(m, -1)) and torch.equal(tv, torch.from_numpy(v).view(n, -1))
    want = sum(int(c) * oracle.lowrank_noise(int(s), int(vs), o, m, n, r) for s, vs, c in zip(seeds, vseeds, coef))
    assert torch.equal((ta @ tv.T).long(), want)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.get("perturbation", "rademacher") + str(k.get("lowrank_rank", "")))
def test_steering_statistic_finds_a_steered_weight_and_not_honest_noise(kind):
    """An origin that picks the sign of q from the noise at one weight (it knows its seeds)
    breaches within one run of 256 steps; q that ignores the noise does not."""
    r = _tiny_replica(**kind)
    seeder = Seeder.for_hyper(b"s" * 32, r.hyper)
    origin, target = b"evil" * 8, 77  # a weight of a matrix (offset 77 lies in the first tensor)
    rnd = random.Random(2)
    honest, steered = [], []
    for step in range(1, 257):
        seed, vseed = seeder.seeds(origin, step)
        q = rnd.randint(20, 60)
        honest.append((seed, q * rnd.choice([-1, 1]), step, vseed))
        t = next(i for i, o in enumerate(r.grid.offsets.tolist()) if o <= target < o + int(r.grid.sizes[i]))
        o, shape = int(r.grid.offsets[t]), r.grid.shapes[t]
        if r.noise.lowrank and t in r.noise.lowrank:
            z = int(oracle.lowrank_noise(seed, vseed, o, shape[0], shape[1], r.hyper.lowrank_rank).reshape(-1)[target - o])
        else:
            z = int(oracle.signs(seed, torch.tensor([target]))[0])
        steered.append((seed, q * (1 if z >= 0 else -1), step, vseed))
    if kind.get("perturbation") == "sparse":
        assert mask_of(r.noise.mask_words, r.grid.total)[target]   # the attacker picks a weight that moves
    before = r.state.clone()
    ok, ratio = r.steering(honest, 100)
    assert not ok and ratio < 40
    bad, ratio = r.steering(steered, 100)
    assert bad and ratio > 100
    assert torch.equal(r.state, before)   # the statistic never touches the replica
