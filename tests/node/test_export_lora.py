"""A LoRA swarm exports the merged model (plain transformers) and the adapter (plain peft)."""
import json

import torch

from onebyte.model import Hyper, Replica
from onebyte.model.load import load_model
from onebyte.model.scope import LORA_PATTERN
from onebyte.node.client.export import save_folder


def test_lora_export_loads_merged_and_as_a_peft_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tok = load_model("tiny")
    hyper = Hyper(lr=1e-4, grid_min_exp=-3, trainable=LORA_PATTERN, lora_rank=4, lora_alpha=8.0,
                  lora_targets=r"model\.layers\.1\.(self_attn|mlp)\.[a-z_]+_proj")
    r = Replica(model, hyper)
    r.replay([(s, 90 - 30 * (s % 7), 1) for s in range(40)])  # B moves away from zero
    assert any(float(p.abs().max()) > 0 for n, p in zip(r.names, r.params) if ".lora_B." in n)
    out = save_folder(r, tok, tmp_path / "export", {"base_model": "tiny", "digest": r.digest()})
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4

    ids = torch.tensor([[3, 17, 5, 9, 11, 2]])
    with torch.no_grad():
        want = r.model(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out).eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
        base, _ = load_model("tiny")
        adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
        torch.testing.assert_close(adapted(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)


def test_adapter_only_export_is_a_peft_adapter_folder(tmp_path):
    import pytest
    from peft import PeftModel

    from onebyte.node.errors import UserError

    model, tok = load_model("tiny")
    hyper = Hyper(lr=1e-4, grid_min_exp=-3, trainable=LORA_PATTERN, lora_rank=4, lora_alpha=8.0,
                  lora_targets=r"model\.layers\.1\.(self_attn|mlp)\.[a-z_]+_proj")
    r = Replica(model, hyper)
    r.replay([(s, 90 - 30 * (s % 7), 1) for s in range(40)])
    out = save_folder(r, tok, tmp_path / "adapter", {"base_model": "tiny", "digest": r.digest()}, adapter_only=True)
    names = {p.name for p in out.iterdir()}
    assert "adapter_config.json" in names and "model.safetensors" not in names and "adapter" not in names
    assert "the LoRA adapter alone" in (out / "README.md").read_text()
    ids = torch.tensor([[3, 17, 5, 9, 11, 2]])
    with torch.no_grad():
        want = r.model(input_ids=ids).logits
        base, _ = load_model("tiny")
        adapted = PeftModel.from_pretrained(base, out).eval()
        torch.testing.assert_close(adapted(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
    plain = Replica(load_model("tiny")[0], Hyper(lr=1e-4))
    with pytest.raises(UserError, match="trains no LoRA adapters"):
        save_folder(plain, tok, tmp_path / "x", {"base_model": "tiny"}, adapter_only=True)
