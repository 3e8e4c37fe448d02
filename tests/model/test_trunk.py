"""The frozen-trunk cache computes what the full forward computes (tiny Llama models)."""
import pytest
import torch

from onebyte.model import Hyper, Replica
from onebyte.model.data import TaskSpec, classification_logits, label_token_ids, make_loss_fn, Example
from onebyte.model.load import load_model
from onebyte.model.scope import LORA_PATTERN
from onebyte.model.trunk import TrunkCache, first_trainable_layer

SPEC = TaskSpec()
TEXTS = ["a great film It was", "the worst movie ever made and so on It was", "fine It was",
         "it is what it is, neither good nor bad, really It was", "bad It was"]


def model_with(layers=4, **hyper):
    from onebyte.model.load import TINY_CONFIG
    cfg = dict(TINY_CONFIG, num_hidden_layers=layers)
    from transformers import LlamaConfig, LlamaForCausalLM
    _, tok = load_model("tiny")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **cfg)).eval()
    return Replica(model, Hyper(**hyper)), tok


@pytest.mark.parametrize("hyper,k", [
    (dict(trainable=r"model\.norm\.weight"), 4),
    (dict(trainable=r"model\.layers\.3\..*|model\.norm\.weight"), 3),
    (dict(trainable=r"model\.layers\.[2-3]\..*"), 2),
    (dict(trainable=LORA_PATTERN, lora_rank=4, lora_targets=r"model\.layers\.[1-3]\..*_proj"), 1),
])
def test_trunk_logits_match_the_full_forward(hyper, k, tmp_path):
    r, tok = model_with(**hyper)
    assert first_trainable_layer(r.model, r.names) == k
    ids = label_token_ids(SPEC, tok)
    trunk = TrunkCache(r.model, tok, k, base_hash="x", path=tmp_path / "trunk.pt")
    assert trunk.fill(TEXTS) == len(TEXTS)
    r.replay([(s, 100, 1) for s in range(5)])  # the trainable part moves; the cache stays valid
    with torch.inference_mode():
        full = classification_logits(r.model, tok, TEXTS, ids)
        cached = classification_logits(r.model, tok, TEXTS, ids, trunk=trunk)
        single = torch.cat([classification_logits(r.model, tok, [t], ids, trunk=trunk) for t in TEXTS])
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, full, rtol=1e-5, atol=1e-5)  # padding partners do not matter
    loss_full = make_loss_fn(SPEC, tok)(r.model, [Example(t, i % 2) for i, t in enumerate(TEXTS)])
    loss_trunk = make_loss_fn(SPEC, tok, trunk=trunk)(r.model, [Example(t, i % 2) for i, t in enumerate(TEXTS)])
    assert loss_trunk == pytest.approx(loss_full, rel=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_the_trunk_is_exact_for_each_architecture_it_accepts(arch, tmp_path):
    """Qwen2 (biased q/k/v) and Mistral compute a layer as Llama does: the cache's shortcuts
    hold, checked here against their own full forward."""
    import transformers
    from onebyte.model.load import TINY_CONFIG
    _, tok = load_model("tiny")
    cfg_class = {"qwen2": transformers.Qwen2Config, "mistral": transformers.MistralConfig}[arch]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        cfg_class(vocab_size=len(tok), **dict(TINY_CONFIG, num_hidden_layers=3))).eval()
    r = Replica(model, Hyper(trainable=r"model\.layers\.2\..*|model\.norm\.weight"))
    assert first_trainable_layer(r.model, r.names) == 2
    ids = label_token_ids(SPEC, tok)
    trunk = TrunkCache(r.model, tok, 2, base_hash="x", path=tmp_path / "trunk.pt")
    trunk.fill(TEXTS)
    r.replay([(s, 100, 1) for s in range(5)])
    with torch.inference_mode():
        full = classification_logits(r.model, tok, TEXTS, ids)
        cached = classification_logits(r.model, tok, TEXTS, ids, trunk=trunk)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


def test_no_cache_for_an_architecture_whose_layers_it_does_not_know():
    import transformers
    torch.manual_seed(0)
    gemma = transformers.AutoModelForCausalLM.from_config(transformers.GemmaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8)).eval()   # scales its embeddings inside forward
    r = Replica(gemma, Hyper(trainable=r"model\.layers\.1\..*"))
    assert first_trainable_layer(r.model, r.names) is None


def test_trunk_file_is_reused_and_rebuilt_when_stale(tmp_path):
    r, tok = model_with(trainable=r"model\.layers\.3\..*")
    path = tmp_path / "trunk.pt"
    TrunkCache(r.model, tok, 3, base_hash="a", path=path).fill(TEXTS)
    again = TrunkCache(r.model, tok, 3, base_hash="a", path=path)
    assert again.loaded == len(TEXTS) and again.fill(TEXTS) == 0
    assert TrunkCache(r.model, tok, 3, base_hash="other", path=path).loaded == 0  # another base model
    assert TrunkCache(r.model, tok, 2, base_hash="a", path=path).loaded == 0      # another scope
    path.write_bytes(b"garbage")
    assert TrunkCache(r.model, tok, 3, base_hash="a", path=path).loaded == 0


def test_no_cache_when_the_bottom_trains():
    r, _ = model_with(trainable=r".*")
    assert first_trainable_layer(r.model, r.names) is None
    r, _ = model_with(trainable=r"model\.layers\.0\..*")
    assert first_trainable_layer(r.model, r.names) is None


def test_a_subset_of_the_cache_is_written_for_one_shard(tmp_path):
    r, tok = model_with(trainable=r"model\.layers\.3\..*")
    pool = TrunkCache(r.model, tok, 3, base_hash="a", path=tmp_path / "pool.pt")
    pool.fill(TEXTS)
    pool.save(tmp_path / "shard.pt", texts=TEXTS[:2])
    shard = TrunkCache(r.model, tok, 3, base_hash="a", path=tmp_path / "shard.pt")
    assert shard.loaded == 2 and shard.fill(TEXTS[:2]) == 0 and len(shard.missing(TEXTS)) == 3


def test_a_higher_layer_is_derived_from_a_lower_layers_file(tmp_path):
    r, tok = model_with(trainable=r"model\.layers\.3\..*")
    lower = TrunkCache(r.model, tok, 1, base_hash="a", path=tmp_path / "k1.pt")
    lower.fill(TEXTS[:4])
    direct = TrunkCache(r.model, tok, 3, base_hash="a")
    direct.fill(TEXTS)
    derived = TrunkCache(r.model, tok, 3, base_hash="a")
    assert derived.fill_from(tmp_path / "k1.pt", TEXTS) == 4   # the fifth text is not in the file
    assert len(derived.missing(TEXTS)) == 1
    for t in TEXTS[:4]:
        eid = derived._encode(t)[0]
        torch.testing.assert_close(derived.h[eid], direct.h[eid], rtol=1e-5, atol=1e-5)
    assert TrunkCache(r.model, tok, 3, base_hash="b").fill_from(tmp_path / "k1.pt", TEXTS) == 0  # another base
    higher = TrunkCache(r.model, tok, 1, base_hash="a")
    TrunkCache(r.model, tok, 3, base_hash="a", path=tmp_path / "k3.pt").fill(TEXTS)
    assert higher.fill_from(tmp_path / "k3.pt", TEXTS) == 0   # a higher layer cannot go down
