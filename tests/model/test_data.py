"""Data files, task specs, the deterministic sampler and the loss functions."""
import json
import math

import pytest
import torch

from onebyte.model.data import (BatchSampler, DataError, Example, TaskSpec, label_margins, load_task,
                                make_loss_fn, shard)
from onebyte.model.load import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny:1")


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_tsv_in_sst2_format(tmp_path):
    # SST-2 rows end in a space and contain bare quotes; both must survive.
    p = write(tmp_path / "d.tsv", 'sentence\tlabel\nit \'s a "charming" film . \t1\nbleak \t0\n')
    task = load_task(p)
    assert [e.label for e in task.examples] == [1, 0]
    assert task.examples[0].text == 'it \'s a "charming" film . It was'
    assert task.spec.verbalizer == (" terrible", " great")


def test_csv_and_jsonl_with_custom_spec(tmp_path):
    spec = TaskSpec(template="Q: {question} A:", verbalizer=(" no", " yes"), label_column="y")
    c = write(tmp_path / "d.csv", 'question,y\n"is it, really?",1\nnope,0\n')
    j = write(tmp_path / "d.jsonl", json.dumps({"question": "is it, really?", "y": 1}) + "\n\n"
              + json.dumps({"question": "nope", "y": "0"}) + "\n")
    a, b = load_task(c, spec), load_task(j, spec.to_dict())
    assert a.examples == b.examples
    assert a.examples[0] == Example("Q: is it, really? A:", 1)


def test_lm_task(tmp_path):
    p = write(tmp_path / "t.jsonl", '{"text": "the movie was great"}\n{"text": "  "}\n')
    task = load_task(p, TaskSpec(kind="lm"))
    assert task.examples == (Example("the movie was great"),)


@pytest.mark.parametrize("content, name, fragment", [
    ("sentence\tlabel\n", "d.tsv", "no data rows"),
    ("", "d.tsv", "no data rows"),
    ("text\tlabel\nfoo\t1\n", "d.tsv", "missing column"),
    ("sentence\tlabel\nfoo\t2\n", "d.tsv", "out of range"),
    ("sentence\tlabel\nfoo\tgood\n", "d.tsv", "bad label"),
    ("sentence\tlabel\nfoo\t\n", "d.tsv", "bad label"),
    ('{"sentence": "x", "label": true}\n', "d.jsonl", "bad label"),
    ('{"sentence": "x"}\n', "d.jsonl", "bad label"),
    ('{"label": 1}\n', "d.jsonl", "missing column"),
    ("{not json\n", "d.jsonl", "invalid JSON"),
    ("[1, 2]\n", "d.jsonl", "object"),
    ("a,b\n", "d.txt", "unsupported"),
])
def test_bad_data_one_line_errors(tmp_path, content, name, fragment):
    p = write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        load_task(p)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_bad_specs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_task(str(tmp_path / "nope.tsv"))
    with pytest.raises(DataError, match="folder"):
        load_task(str(tmp_path))
    with pytest.raises(DataError, match="unknown built-in"):
        load_task("builtin:nope")
    with pytest.raises(DataError):
        TaskSpec(verbalizer=(" a",))
    with pytest.raises(DataError):
        TaskSpec(verbalizer=(" a", " a"))
    with pytest.raises(DataError):
        TaskSpec(template="no fields")
    with pytest.raises(DataError):
        TaskSpec(kind="regression")
    with pytest.raises(DataError, match="unknown task spec keys"):
        TaskSpec.from_dict({"kind": "lm", "colour": 1})


def test_verbalizer_sharing_first_token_is_rejected(tiny, tmp_path):
    _, tok = tiny
    # Unknown to the tiny tokenizer, both words start with the same byte token "Ġ".
    spec = TaskSpec(verbalizer=(" zq", " zx"))
    with pytest.raises(DataError, match="share a first token"):
        make_loss_fn(spec, tok)


def test_sampler_is_deterministic_and_covers_epochs():
    s1, s2, other = BatchSampler(10, 4, seed=7), BatchSampler(10, 4, seed=7), BatchSampler(10, 4, seed=8)
    assert [s1.indices(k) for k in (5, 1, 3)] == [s2.indices(k) for k in (5, 1, 3)]
    assert [s1.indices(k) for k in range(1, 6)] != [other.indices(k) for k in range(1, 6)]
    # Steps 1-5 cover positions 0..19: two full epochs, each a permutation of all 10 examples.
    flat = [i for k in range(1, 6) for i in s1.indices(k)]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    with pytest.raises(ValueError):
        s1.indices(0)
    with pytest.raises(DataError):
        BatchSampler(0, 4, seed=1)


def test_shard_is_a_disjoint_cover():
    xs = [Example(str(i), 0) for i in range(10)]
    parts = [shard(xs, i, 3) for i in range(3)]
    assert sorted(e.text for p in parts for e in p) == sorted(e.text for e in xs)
    with pytest.raises(ValueError):
        shard(xs, 3, 3)


def test_classification_loss_matches_manual_computation(tiny):
    model, tok = tiny
    spec = TaskSpec(template="{text} It was", verbalizer=(" terrible", " great"))
    batch = [Example("the movie was great . It was", 1), Example("a dull film It was", 0),
             Example("the ending was really painful and the acting was weak . It was", 0)]
    loss = make_loss_fn(spec, tok)(model, batch)
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in spec.verbalizer]
    manual = []
    with torch.no_grad():
        for e in batch:  # unpadded, one at a time: padding must not change anything
            x = torch.tensor([tok(e.text)["input_ids"]])
            logits = model(x).logits[0, -1, ids]
            manual.append(-torch.log_softmax(logits, -1)[e.label])
    assert loss == pytest.approx(float(torch.stack(manual).mean()), rel=1e-5)


def test_label_margins_and_the_audits_margin_loss(tiny):
    """Two labels: the margin is the logit difference; more: minus the log-sum-exp of the others.
    A classification loss_fn carries .margin (minus the mean margin, what a peer audit measures)
    (checked against logits computed by hand); an lm task has none."""
    logits = torch.tensor([[1.0, 3.0], [2.0, -1.0]])
    assert torch.allclose(label_margins(logits, [1, 1]), torch.tensor([2.0, -3.0]))
    three = torch.tensor([[0.5, 2.0, -1.0]])
    assert torch.allclose(label_margins(three, [1]), 2.0 - torch.logsumexp(torch.tensor([0.5, -1.0]), 0)[None])
    model, tok = tiny
    spec = TaskSpec(template="{text} It was", verbalizer=(" terrible", " great"))
    batch = [Example("the movie was great . It was", 1), Example("a dull film It was", 0)]
    loss_fn = make_loss_fn(spec, tok)
    ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in spec.verbalizer]
    with torch.no_grad():
        manual = [model(torch.tensor([tok(e.text)["input_ids"]])).logits[0, -1, ids] for e in batch]
    margins = [float(m[e.label] - m[1 - e.label]) for m, e in zip(manual, batch)]
    assert loss_fn.margin(model, batch) == pytest.approx(-sum(margins) / 2, rel=1e-5, abs=1e-6)
    assert not hasattr(make_loss_fn(TaskSpec(kind="lm"), tok), "margin")


def test_lm_loss_and_autocast(tiny):
    model, tok = tiny
    spec = TaskSpec(kind="lm")
    batch = [Example("the movie was great"), Example("a film")]
    loss = make_loss_fn(spec, tok)(model, batch)
    assert math.isfinite(loss) and loss > 0
    # bf16 autocast runs the forward in bf16; the loss stays close to fp32 and weights stay fp32.
    loss16 = make_loss_fn(spec, tok, autocast_dtype=torch.bfloat16)(model, batch)
    assert loss16 == pytest.approx(loss, rel=0.05)
    assert next(model.parameters()).dtype == torch.float32
