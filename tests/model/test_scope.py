"""Trainable scopes: LoRA adapters (peft) start bit-identical everywhere and keep every exactness invariant."""
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from onebyte.model import Hyper, HyperError, Replica
from onebyte.model.scope import LORA_PATTERN

sys.path.insert(0, str(Path(__file__).parent))
import oracle  # noqa: E402

LORA = dict(lora_rank=4, lora_alpha=8.0, lora_targets=r".*\.(q_proj|v_proj|down_proj)", trainable=LORA_PATTERN)


def lora_replica(**kw):
    return Replica(oracle.tiny_llama(), Hyper(lr=2e-5, **{**LORA, **kw}))


def test_lora_scope_trains_only_adapters_and_starts_as_the_base():
    base = oracle.tiny_llama()
    r = lora_replica()
    assert r.names and all(".lora_A." in n or ".lora_B." in n for n in r.names)
    assert len(r.names) == 2 * 3 * 2  # 2 layers x 3 target modules x (A, B)
    batch = oracle.lm_batch(1)
    with torch.no_grad():  # B = 0: the adapted model computes exactly what the base does
        assert torch.equal(base(input_ids=batch).logits, r.model(input_ids=batch).logits)
    assert any(float(p.abs().max()) > 0 for n, p in zip(r.names, r.params) if ".lora_A." in n)
    assert all(float(p.abs().max()) == 0 for n, p in zip(r.names, r.params) if ".lora_B." in n)


def test_lora_init_is_identical_in_two_processes():
    code = ("import sys; sys.path.insert(0, %r); import oracle; from onebyte.model import Hyper, Replica; "
            "print(Replica(oracle.tiny_llama(), Hyper(**%r)).digest())" % (str(Path(__file__).parent), LORA))
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              timeout=300).stdout.strip() for _ in range(2)}
    assert len(digests) == 1 and digests == {lora_replica().digest()}


def test_lora_replay_is_permutation_invariant_and_the_step_restores_exactly():
    rnd = random.Random(3)
    ups = [(rnd.getrandbits(64), rnd.randint(-127, 127), rnd.randint(1, 50)) for _ in range(60)]
    a, b = lora_replica(), lora_replica()
    a.replay(ups)
    shuffled = ups[:]
    rnd.shuffle(shuffled)
    for i in range(0, len(shuffled), 7):
        b.replay(shuffled[i:i + 7])
    assert a.digest() == b.digest()
    # a step whose loss ignores the weights gives q = 0: perturb, perturb back, restore -> same bits
    before = a.digest()
    (q,), _ = a.local_step(lambda model, batch: 1.0, None, [(99, 1)])
    assert q == 0 and a.digest() == before
    (q,), _ = a.local_step(oracle.lm_loss, oracle.lm_batch(2), [(100, 2)])
    b.replay([(100, q, 2)])
    assert a.digest() == b.digest()


def test_lora_scope_errors_are_clear():
    with pytest.raises(HyperError, match="lora_targets"):
        Hyper(lora_rank=4)
    with pytest.raises(HyperError, match="matches no linear module"):
        Replica(oracle.tiny_llama(), Hyper(lora_rank=4, lora_targets="nothing_here", trainable=LORA_PATTERN))
    with pytest.raises(HyperError, match="not a valid regex"):
        Hyper(lora_rank=4, lora_targets="(")


def test_adapters_random_walk_cannot_halt_the_replica():
    """While B = 0 the loss does not depend on A, so A only random-walks; on the int64 state no
    walk reaches a bound (the fp32 grid overflowed here before). horizon_updates still coarsens
    the quantum as it did, for genesis files that set it."""
    from onebyte.model.grid import horizon_margin
    rnd = random.Random(9)
    n = 600
    ups = [(rnd.getrandbits(64), rnd.choice([-6, -4, -3, 3, 4, 6]), 1) for _ in range(n)]
    lora = dict(LORA, trainable=r".*\.lora_A\..*")
    r = Replica(oracle.tiny_llama(), Hyper(lr=1e-2, **lora))
    r.replay(ups)
    assert torch.isfinite(r.flat).all()
    h = Hyper(lr=1e-2, horizon_updates=n, **lora)
    assert horizon_margin(h) == 8 * h.max_step() * n ** 0.5
    wide = Replica(oracle.tiny_llama(), h)
    assert (wide.grid.exps > r.grid.exps).all()


def test_swarm_size_scales_each_update():
    one, four = Hyper(lr=1e-3), Hyper(lr=1e-3, swarm_nodes=4)
    assert four.lr_at(1) == one.lr_at(1) / 2  # sqrt(4)
    assert Hyper(lr=1e-3, swarm_nodes=4, lr_swarm_scaling="linear").lr_at(1) == one.lr_at(1) / 4
    assert Hyper(lr=1e-3, swarm_nodes=4, lr_swarm_scaling="none").lr_at(1) == one.lr_at(1)
    with pytest.raises(HyperError, match="lr_swarm_scaling"):
        Hyper(lr_swarm_scaling="log")
