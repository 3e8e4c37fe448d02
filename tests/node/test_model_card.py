"""An export's model card carries the metadata the Hugging Face Hub reads (YAML front matter)."""
import json
from types import SimpleNamespace

import yaml

from onebyte.node.export import hub_model_id, model_card


def card_meta(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def replica(lora_rank: int = 0):
    return SimpleNamespace(hyper=SimpleNamespace(lora_rank=lora_rank), n_trainable=1234)


def test_front_matter_names_the_hub_base_model_library_and_license():
    meta = {"base_model": "smollm2", "swarm_id": "ab" * 32, "updates": 10, "origins": 2, "digest": "d",
            "task": {"template": "Movie review: {sentence}\nSentiment:", "verbalizer": [" negative", " positive"]}}
    front = card_meta(model_card(meta, replica()))
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["library_name"] == "transformers" and front["license"] == "apache-2.0"
    assert front["pipeline_tag"] == "text-classification" and "onebyte" in front["tags"]
    assert card_meta(model_card(meta, replica(lora_rank=4)))["library_name"] == "peft"


def test_an_unknown_base_model_is_left_out_rather_than_guessed(tmp_path):
    assert "base_model" not in card_meta(model_card({"base_model": "tiny", "task": {}}, replica()))
    assert hub_model_id(str(tmp_path / "model.gguf")) is None
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "someone/some-model"}))
    assert hub_model_id(str(tmp_path)) == "someone/some-model"
