"""A frozen base in half precision, the trainable scope exact: load_model(dtype, keep_fp32) and
a Replica over it start from the bits an fp32 load gives, and replay the same updates to the
same digest; a bf16 local step runs under autocast (tiny Llama models)."""
import re

import pytest
import torch

from onebyte.model import Hyper, Replica
from onebyte.model.data import Example, TaskSpec, make_loss_fn
from onebyte.model.load import ModelLoadError, load_model
from onebyte.model.scope import LORA_PATTERN
from onebyte.model.trunk import TrunkCache

TOP = r"model\.layers\.1\..*|model\.norm\.weight"
LORA = dict(trainable=LORA_PATTERN, lora_rank=4, lora_targets=r"model\.layers\.1\..*_proj")
BATCH = [Example("the movie was great . It was", 1), Example("a dull film It was", 0),
         Example("the ending was really painful It was", 0), Example("what a lovely story It was", 1)]
UPDATES = [(s, q, step, s + 7) for step, (s, q) in enumerate([(11, 40), (12, -90), (13, 7), (14, 127)], 1)]


def keep(pattern):
    rx = re.compile(pattern)
    return lambda name: bool(rx.fullmatch(name))


def replica(spec, dtype, **hyper):
    h = Hyper(**hyper)
    model, tok = load_model(spec, dtype, keep_fp32=keep(h.trainable))
    return Replica(model, h), tok


@pytest.mark.parametrize("hyper", [dict(trainable=TOP), LORA], ids=["top1", "lora"])
def test_a_bf16_base_starts_and_replays_to_the_fp32_replicas_digest(hyper):
    full, _ = replica("tiny", torch.float32, **hyper)
    half, _ = replica("tiny", torch.bfloat16, **hyper)
    assert half.digest() == full.digest()
    assert all(p.dtype == torch.float32 for p in half.params)
    frozen = [p for n, p in half.model.named_parameters() if not any(p is q for q in half.params)]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    full.replay(UPDATES)
    half.replay(UPDATES)
    assert half.digest() == full.digest()


def test_a_bf16_local_step_runs_under_autocast_and_its_updates_replay_exactly_on_an_fp32_node():
    spec = TaskSpec(template="{text} It was", verbalizer=(" terrible", " great"))
    half, tok = replica("tiny", torch.bfloat16, trainable=TOP, probes=2)
    full, _ = replica("tiny", torch.float32, trainable=TOP, probes=2)
    k = 1
    trunk = TrunkCache(half.model, tok, k, dtype=torch.bfloat16)
    loss_fn = make_loss_fn(spec, tok, autocast_dtype=torch.bfloat16, trunk=trunk)
    with pytest.raises(RuntimeError):   # without autocast the fp32 layer meets bf16 inputs
        make_loss_fn(spec, tok)(half.model, BATCH)
    qs, loss = half.local_step(loss_fn, BATCH, [(21, 1, 28), (22, 2, 29)])
    assert 0 < loss < 10 and len(qs) == 2
    assert trunk.h and all(t.dtype == torch.bfloat16 for t in trunk.h.values())   # half the memory
    full.replay([(21, qs[0], 1, 28), (22, qs[1], 2, 29)])
    assert full.digest() == half.digest()


def test_a_sharded_safetensors_folder_keeps_its_scope_exact_in_bf16(tmp_path):
    """A bf16 checkpoint in shards, as models are published: the bf16 load reads the trainable
    tensors again from their shards, widened to the bits an fp32 load gives."""
    model, tok = load_model("tiny")
    model.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="20KB", safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").exists()
    full, _ = replica(str(tmp_path), torch.float32, trainable=TOP)
    half, _ = replica(str(tmp_path), torch.bfloat16, trainable=TOP)
    assert half.digest() == full.digest()
    assert next(half.model.model.embed_tokens.parameters()).dtype == torch.bfloat16


def test_a_kept_tensor_the_checkpoint_lacks_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file
    model, tok = load_model("tiny")
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.norm.weight"]       # transformers initialises it; no fp32 bits to read
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="cannot keep model.norm.weight in fp32"):
        load_model(str(tmp_path), torch.bfloat16, keep_fp32=keep(TOP))
