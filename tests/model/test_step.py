"""The local step: probes leave the state alone, own update == a peer's replay, every estimator and
noise kind, trainable subsets, tied weights, snapshots."""
import sys
from pathlib import Path

import pytest
import torch

from onebyte.model import GridError, Hyper, HyperError, Replica, Seeder
from onebyte.model.grid import update_coefficients

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402

HYPER = Hyper(lr=1e-4, q_scale=0.05)
ESTIMATORS = {
    "spsa": {},
    "fzoo4": {"probes": 4, "q_scale": 1 / 32},
    "lowrank_fzoo": {"probes": 3, "q_scale": 1 / 32, "perturbation": "lowrank", "lowrank_window": 2},
    "sparse": {"perturbation": "sparse", "sparse_fraction": 0.5},
}


def _hyper(**kw):
    return Hyper(**{"lr": 1e-4, "q_scale": 0.05, **kw})


def _probes(seeder, first_step, n, origin=b"me" * 16):
    return [(s, step, v) for step in range(first_step, first_step + n) for s, v in [seeder.seeds(origin, step)]]


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_step_equals_peer_replay(name):
    h = _hyper(**ESTIMATORS[name])
    me, peer = Replica(oracle.tiny_llama(), h), Replica(oracle.tiny_llama(), h)
    seeder = Seeder.for_hyper(b"s" * 32, h)
    assert me.digest() == peer.digest()
    batch = oracle.lm_batch()
    step = 1
    for _ in range(3):
        probes = _probes(seeder, step, h.probes)
        qs, loss = me.local_step(oracle.lm_loss, batch, probes)
        assert len(qs) == h.probes and all(-127 <= q <= 127 for q in qs) and loss > 0
        peer.replay([(s, q, st, v) for (s, st, v), q in zip(probes, qs)])
        assert torch.equal(me.state, peer.state)
        assert torch.equal(me.flat.view(torch.int32), peer.flat.view(torch.int32))
        step += h.probes
    assert me.digest() != Replica(oracle.tiny_llama(), h).digest()


def test_spsa_sees_plus_then_minus_perturbation_and_leaves_only_its_update():
    r = Replica(oracle.tiny_llama(), HYPER)
    before = r.state.clone()
    seen = []

    def loss_fn(model, batch):
        seen.append(r.flat.clone())
        return oracle.lm_loss(model, batch)

    (q,), _ = r.local_step(loss_fn, oracle.lm_batch(), [(5, 1)])
    eps = torch.cat([torch.full((int(n),), int(k)) for n, k in zip(r.grid.sizes, r.grid.eps_k)])
    z = oracle.signs(5, torch.arange(r.grid.total)).to(torch.int64)
    show = lambda s: oracle.show(s, r.grid.offsets, r.grid.sizes, r.grid.quantum)  # noqa: E731
    assert torch.equal(seen[0], show(before + eps * z))   # exact: both sides are grid points
    assert torch.equal(seen[1], show(before - eps * z))
    c = update_coefficients(r.grid, r.hyper, 5, q, 1)
    want = oracle.replay(before, r.grid.offsets, r.grid.sizes, [(5, c)])
    assert torch.equal(r.state, want)
    assert torch.equal(r.flat, show(want))


def test_fzoo_measures_clean_then_each_probe_and_normalises():
    h = _hyper(probes=3, q_scale=1 / 32)
    r = Replica(oracle.tiny_llama(), h)
    before = r.state.clone()
    seen, losses = [], iter([2.0, 2.5, 1.5, 2.0])   # clean, then three probes: std 0.5

    def loss_fn(model, batch):
        seen.append(r.flat.clone())
        return next(losses)

    qs, loss = r.local_step(loss_fn, None, [(11, 1), (12, 2), (13, 3)])
    show = lambda s: oracle.show(s, r.grid.offsets, r.grid.sizes, r.grid.quantum)  # noqa: E731
    assert torch.equal(seen[0], show(before)) and loss == 2.0
    eps = torch.cat([torch.full((int(n),), int(k)) for n, k in zip(r.grid.sizes, r.grid.eps_k)])
    for k, seed in enumerate((11, 12, 13)):
        z = oracle.signs(seed, torch.arange(r.grid.total)).to(torch.int64)
        assert torch.equal(seen[k + 1], show(before + eps * z))   # one-sided, from the state each time
    assert qs == [32, -32, 0]            # (l_k - l0) / sigma = +1, -1, 0, in units of q_scale = 1/32
    coefs = [(s, update_coefficients(r.grid, h, s, q, st)) for s, q, st in zip((11, 12, 13), qs, (1, 2, 3))]
    assert torch.equal(r.state, oracle.replay(before, r.grid.offsets, r.grid.sizes, coefs))


def test_fzoo_flat_loss_gives_no_direction():
    r = Replica(oracle.tiny_llama(), _hyper(probes=2, q_scale=1 / 32))
    before = r.state.clone()
    qs, _ = r.local_step(lambda m, b: 1.0, None, [(1, 1), (2, 2)])
    assert qs == [0, 0] and torch.equal(r.state, before)


@pytest.mark.parametrize("name", ["spsa", "fzoo4"])
def test_failing_loss_restores_weights(name):
    h = _hyper(**ESTIMATORS[name])
    r = Replica(oracle.tiny_llama(), h)
    before, shown = r.state.clone(), r.flat.clone()
    calls = []

    def bad_loss(model, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return 1.0

    with pytest.raises(RuntimeError, match="boom"):
        r.local_step(bad_loss, None, [(9 + k, 1 + k) for k in range(h.probes)])
    assert torch.equal(r.state, before) and torch.equal(r.flat.view(torch.int32), shown.view(torch.int32))


def test_probe_count_must_match_the_genesis():
    r = Replica(oracle.tiny_llama(), _hyper(probes=2, q_scale=1 / 32))
    with pytest.raises(ValueError, match="2 probe"):
        r.local_step(oracle.lm_loss, oracle.lm_batch(), [(1, 1)])
    with pytest.raises(ValueError, match="probe is"):
        r.local_step(oracle.lm_loss, oracle.lm_batch(), [1, 2])


def test_trainable_subset_only_moves_matching_tensors():
    hyper = Hyper(lr=1e-3, trainable=r".*\.mlp\..*")
    r = Replica(oracle.tiny_llama(), hyper)
    assert r.names and all(".mlp." in n for n in r.names)
    frozen = {n: p.detach().clone() for n, p in r.model.named_parameters() if ".mlp." not in n}
    r.local_step(oracle.lm_loss, oracle.lm_batch(), [(3, 1)])
    r.replay([(4, 100, 1)])
    for n, p in r.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_tied_weights_counted_once():
    r = Replica(oracle.tiny_llama(tie=True), HYPER)
    assert "model.embed_tokens.weight" in r.names and "lm_head.weight" not in r.names
    assert r.model.lm_head.weight.data_ptr() == r.model.model.embed_tokens.weight.data_ptr()
    r.replay([(4, 100, 1)])
    assert torch.equal(r.model.lm_head.weight, r.model.model.embed_tokens.weight)
    untied = Replica(oracle.tiny_llama(tie=False), HYPER)
    assert "lm_head.weight" in untied.names
    assert r.n_trainable == untied.n_trainable - r.model.lm_head.weight.numel()
    head_only = Replica(oracle.tiny_llama(tie=True), Hyper(trainable=r"lm_head\.weight"))
    assert head_only.names == ["model.embed_tokens.weight"]  # the alias selects the shared tensor


def test_index_order_is_sorted_names():
    r = Replica(oracle.tiny_llama(), HYPER)
    assert r.names == sorted(r.names)
    for n, p, o in zip(r.names, r.params, r.grid.offsets):
        assert p.data_ptr() == r.flat[int(o):].data_ptr(), n


@pytest.mark.parametrize("kind", [{}, {"perturbation": "lowrank"}])
def test_save_load_roundtrip(tmp_path, kind):
    h = _hyper(**kind)
    a = Replica(oracle.tiny_llama(), h)
    a.replay([(1, 50, 1, 7), (2, -70, 1, 7)])
    a.save(tmp_path / "snap.safetensors")
    b = Replica(oracle.tiny_llama(), h)
    b.load(tmp_path / "snap.safetensors")
    assert a.digest() == b.digest() and torch.equal(a.flat.view(torch.int32), b.flat.view(torch.int32))
    a.replay([(3, 1, 2, 7)])
    b.replay([(3, 1, 2, 7)])
    assert a.digest() == b.digest()


def test_load_rejects_foreign_snapshot(tmp_path):
    a = Replica(oracle.tiny_llama(), Hyper(trainable=r".*mlp.*"))
    a.save(tmp_path / "s.safetensors")
    b = Replica(oracle.tiny_llama(), HYPER)
    with pytest.raises(GridError, match="does not match|different tensors"):
        b.load(tmp_path / "s.safetensors")
    with pytest.raises(GridError, match="cannot read"):
        b.load(tmp_path / "missing.safetensors")


def test_replica_input_errors():
    with pytest.raises(HyperError, match="matches no"):
        Replica(oracle.tiny_llama(), Hyper(trainable="nothing-matches"))
    with pytest.raises(GridError, match="float32"):
        Replica(oracle.tiny_llama().to(torch.bfloat16), HYPER)
    with pytest.raises(HyperError, match="device"):
        Replica(oracle.tiny_llama(), HYPER, device="meta")
    with pytest.raises(GridError, match="2\\*\\*24 quanta"):
        Replica(oracle.tiny_llama(), Hyper(lr=1e3))


def test_digest_is_blake2b_of_the_int64_state():
    """The digest format that replicas compare (docs/numerics.md): blake2b-256 of the
    little-endian int64 state (quanta) of the trainable weights in index order."""
    import hashlib
    r = Replica(oracle.tiny_llama(), Hyper(lr=2e-4), "cpu")
    r.replay([(7, 5, 1), (8, -3, 2)])
    want = hashlib.blake2b(r.state.numpy().astype("<i8").tobytes(), digest_size=32).hexdigest()
    assert r.digest() == want


def test_fzoo_mean_baseline_skips_the_clean_pass_and_centres_g():
    h = _hyper(probes=3, q_scale=1 / 32, probe_baseline="mean")
    r = Replica(oracle.tiny_llama(), h)
    losses = iter([2.5, 1.5, 2.0])   # three probes, no clean pass: mean 2.0, std 0.5
    qs, loss = r.local_step(lambda m, b: next(losses), None, [(11, 1), (12, 2), (13, 3)])
    assert qs == [32, -32, 0] and loss == 2.0 and sum(qs) == 0
    with pytest.raises(HyperError, match="probe_baseline"):
        Hyper(probe_baseline="median")
