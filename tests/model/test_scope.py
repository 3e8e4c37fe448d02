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


# --- named scopes by the model's own layer list (issue 24: models people use) -------------

def _tiny(kind: str, **over):
    """A tiny random causal LM of an architecture transformers ships, built from its config."""
    import transformers
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
    cfgs = {
        "llama": lambda: transformers.LlamaConfig(intermediate_size=48, num_key_value_heads=2, **common),
        "qwen2": lambda: transformers.Qwen2Config(intermediate_size=48, num_key_value_heads=2, **common),
        "mistral": lambda: transformers.MistralConfig(intermediate_size=48, num_key_value_heads=2, **common),
        "gemma": lambda: transformers.GemmaConfig(intermediate_size=48, num_key_value_heads=2, head_dim=8, **common),
        "gpt2": lambda: transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=64),
        "opt": lambda: transformers.OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                              ffn_dim=48, word_embed_proj_dim=32, max_position_embeddings=64),
    }
    torch.manual_seed(0)
    cfg = cfgs[kind]()
    for k, v in over.items():
        setattr(cfg, k, v)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("kind,layers,norm", [
    ("llama", "model.layers", "model.norm"), ("qwen2", "model.layers", "model.norm"),
    ("mistral", "model.layers", "model.norm"), ("gemma", "model.layers", "model.norm"),
    ("gpt2", "transformer.h", "transformer.ln_f"), ("opt", "model.decoder.layers", "model.decoder.final_layer_norm"),
])
def test_named_scopes_address_each_architecture_by_its_own_layer_list(kind, layers, norm):
    from onebyte.model.scope import layout_of, scope_preset
    model = _tiny(kind)
    lay = layout_of(model, 3)
    assert (lay.layers, lay.n_layers, lay.final_norm) == (layers, 3, norm)
    top = Replica(model, Hyper(**scope_preset("top1", lay)))
    assert top.names and all(n.startswith(f"{layers}.2.") or n == f"{norm}.weight" for n in top.names)
    assert f"{norm}.weight" in top.names
    lora = Replica(_tiny(kind), Hyper(**scope_preset("lora-top1", lay)))
    assert lora.names and all(n.startswith(f"{layers}.2.") and ".lora_" in n for n in lora.names)
    assert len(lora.names) == 2 * len(lay.projections)          # an A and a B per projection


def test_llama_named_scopes_write_the_regexes_they_always_wrote():
    """The swarm id is a hash of the genesis: a SmolLM2 preset must not change its text."""
    from onebyte.model.scope import Layout, layout_of, scope_preset
    assert scope_preset("top1", layout_of(_tiny("llama"), 3)) == scope_preset("top1", 3)
    assert scope_preset("lora-top2", Layout.llama(30))["lora_targets"] == \
        r"model\.layers\.(28|29)\.(self_attn|mlp)\.[a-z_]+_proj"
    assert scope_preset("top1", 30)["trainable"] == r"model\.layers\.(29)\..*|model\.norm\.weight"


def test_a_model_without_a_layer_list_is_one_clear_error():
    from onebyte.model.scope import layout_of
    with pytest.raises(HyperError, match="cannot find the 3 decoder layers of this Sequential"):
        layout_of(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), 3)
