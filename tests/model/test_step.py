"""The local step: exact restore, own update == a peer's replay, trainable subsets, tied weights, snapshots."""
import sys
from pathlib import Path

import pytest
import torch

from onebyte.model import GridError, Hyper, HyperError, Replica
from onebyte.model.grid import update_coefficients

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402

HYPER = Hyper(lr=1e-4, q_scale=0.05)


def _bits(r):
    return r.flat.view(torch.int32).clone()


def test_step_equals_peer_replay():
    me, peer = Replica(oracle.tiny_llama(), HYPER), Replica(oracle.tiny_llama(), HYPER)
    assert me.digest() == peer.digest()
    batch = oracle.lm_batch()
    seeds = [11, 22, 33]
    for step, seed in enumerate(seeds, start=1):
        q, loss = me.local_step(oracle.lm_loss, batch, seed, step)
        assert -127 <= q <= 127 and loss > 0
        peer.replay([(seed, q, step)])
        assert torch.equal(_bits(me), _bits(peer))
    assert me.digest() != Replica(oracle.tiny_llama(), HYPER).digest()


def test_step_sees_plus_then_minus_perturbation_and_restores():
    r = Replica(oracle.tiny_llama(), HYPER)
    before = r.flat.clone()
    seen = []

    def loss_fn(model, batch):
        seen.append(r.flat.clone())
        return oracle.lm_loss(model, batch)

    q, _ = r.local_step(loss_fn, oracle.lm_batch(), seed=5, step=1)
    eps = torch.cat([torch.full((int(n),), float(k * dq)) for n, k, dq in
                     zip(r.grid.sizes, r.grid.eps_k, r.grid.quantum)])
    z = oracle.signs(5, torch.arange(r.grid.total)).float()
    assert torch.equal(seen[0], before + eps * z)  # exact: both sides are grid points
    assert torch.equal(seen[1], before - eps * z)
    # the step leaves exactly before + its own update (the oracle adds it to the saved weights)
    c = update_coefficients(r.grid, r.hyper, 5, q, 1)
    want = oracle.replay(before, r.grid.offsets, r.grid.sizes, r.grid.quantum, [(5, c)])
    assert torch.equal(r.flat.view(torch.int32), want.view(torch.int32))


def test_failing_loss_restores_weights():
    r = Replica(oracle.tiny_llama(), HYPER)
    before = _bits(r)
    calls = []

    def bad_loss(model, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return 1.0

    with pytest.raises(RuntimeError, match="boom"):
        r.local_step(bad_loss, None, seed=9, step=1)
    assert torch.equal(_bits(r), before)


def test_trainable_subset_only_moves_matching_tensors():
    hyper = Hyper(lr=1e-3, trainable=r".*\.mlp\..*")
    r = Replica(oracle.tiny_llama(), hyper)
    assert r.names and all(".mlp." in n for n in r.names)
    frozen = {n: p.detach().clone() for n, p in r.model.named_parameters() if ".mlp." not in n}
    r.local_step(oracle.lm_loss, oracle.lm_batch(), seed=3, step=1)
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


def test_save_load_roundtrip(tmp_path):
    a = Replica(oracle.tiny_llama(), HYPER)
    a.replay([(1, 50, 1), (2, -70, 1)])
    a.save(tmp_path / "snap.safetensors")
    b = Replica(oracle.tiny_llama(), HYPER)
    b.load(tmp_path / "snap.safetensors")
    assert a.digest() == b.digest()
    a.replay([(3, 1, 2)])
    b.replay([(3, 1, 2)])
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


def test_digest_is_blake2b_of_the_trainable_fp32_bytes():
    """The digest format that replicas compare (docs/numerics.md): blake2b-256 of the
    little-endian fp32 bytes of the trainable weights in index order, hashed in place."""
    import hashlib
    r = Replica(oracle.tiny_llama(), Hyper(lr=2e-4), "cpu")
    r.replay([(7, 5, 1), (8, -3, 2)])
    want = hashlib.blake2b(r.flat.numpy().astype("<f4").tobytes(), digest_size=32).hexdigest()
    assert r.digest() == want
