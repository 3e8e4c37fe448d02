"""An export's model card carries the metadata the Hugging Face Hub reads (YAML front matter)."""
import json
from types import SimpleNamespace

import yaml

from onebyte.node.client.export import hub_model_id, model_card, record_eval, update_meta


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
    assert card_meta(model_card({**meta, "hyper": {"lora_rank": 4}}, replica(lora_rank=4)))["library_name"] == "peft"


def test_a_recorded_score_becomes_the_cards_model_index(tmp_path):
    meta = {"base_model": "smollm2", "digest": "d", "task": {"template": "{sentence} It was", "verbalizer": ["a", "b"]}}
    (tmp_path / "onebyte.json").write_text(json.dumps(meta))
    (tmp_path / "README.md").write_text(model_card(meta, replica()))
    body = (tmp_path / "README.md").read_text().split("---\n", 2)[2]
    record_eval(tmp_path, {"accuracy": 0.81234, "loss": 0.4, "n": 872, "data": "/somewhere/dev.tsv"})
    card = (tmp_path / "README.md").read_text()
    result = card_meta(card)["model-index"][0]["results"][0]
    assert result["task"]["type"] == "text-classification" and result["dataset"]["name"] == "dev.tsv"
    assert result["metrics"] == [{"type": "accuracy", "value": 0.8123, "name": "accuracy on 872 rows"}]
    assert card.split("---\n", 2)[2] == body                         # the card's text is kept
    assert json.loads((tmp_path / "onebyte.json").read_text())["eval"]["accuracy"] == 0.8123
    record_eval(tmp_path, {"accuracy": 0.5, "loss": 0.7, "n": 10, "data": "x.tsv"})   # a second score replaces it
    assert len(card_meta((tmp_path / "README.md").read_text())["model-index"][0]["results"]) == 1
    update_meta(tmp_path, datasets=["stanfordnlp/sst2"])                   # export --dataset: the Hub id
    front = card_meta((tmp_path / "README.md").read_text())
    assert front["datasets"] == ["stanfordnlp/sst2"]
    assert front["model-index"][0]["results"][0]["dataset"] == {"name": "x.tsv", "type": "stanfordnlp/sst2"}
    assert (tmp_path / "README.md").read_text().split("---\n", 2)[2] == body


def test_an_unknown_base_model_is_left_out_rather_than_guessed(tmp_path):
    assert "base_model" not in card_meta(model_card({"base_model": "tiny", "task": {}}, replica()))
    assert hub_model_id(str(tmp_path / "model.gguf")) is None
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "someone/some-model"}))
    assert hub_model_id(str(tmp_path)) == "someone/some-model"
