"""Held-out evaluation on the tiny model."""
import math

import pytest
import torch

from onebyte.model.data import Example, TaskSpec, Task, load_task, make_loss_fn
from onebyte.model.evaluate import evaluate
from onebyte.model.load import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny:1")


def test_evaluate_matches_loss_fn_and_is_batch_independent(tiny):
    model, tok = tiny
    task = load_task("builtin:sentiment", split="eval")
    xs = task.examples[:40]
    a = evaluate(model, tok, task, xs, batch_size=7)
    b = evaluate(model, tok, task, xs, batch_size=40)
    assert a["n"] == b["n"] == 40
    assert a["accuracy"] == b["accuracy"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["loss"] == pytest.approx(make_loss_fn(task, tok)(model, xs), rel=1e-5)
    assert 0.0 <= a["accuracy"] <= 1.0


def test_verbalizer_sanity_on_tiny_model(tiny):
    """Equal head rows for both label words => every prediction ties at index 0 and the
    candidate-restricted loss is exactly ln 2; swapping the verbalizer flips every prediction."""
    model, tok = tiny
    task = load_task("builtin:sentiment", split="eval")
    xs = task.examples[:64]
    share0 = sum(e.label == 0 for e in xs) / len(xs)
    a, b = (tok(w, add_special_tokens=False)["input_ids"][0] for w in task.spec.verbalizer)
    saved = model.lm_head.weight[b].clone()
    try:
        with torch.no_grad():
            model.lm_head.weight[b] = model.lm_head.weight[a]
        tied = evaluate(model, tok, task, xs)
    finally:
        with torch.no_grad():
            model.lm_head.weight[b] = saved
    assert tied["accuracy"] == pytest.approx(share0)
    assert tied["loss"] == pytest.approx(math.log(2), rel=1e-6)

    swapped = Task("swapped", TaskSpec(template="{text} Label:", verbalizer=(" B", " A")), task.examples)
    r1, r2 = evaluate(model, tok, task, xs), evaluate(model, tok, swapped, xs)
    assert r1["accuracy"] + r2["accuracy"] == pytest.approx(1.0)


def test_lm_evaluation_and_empty(tiny):
    model, tok = tiny
    task = Task("t", TaskSpec(kind="lm"), (Example("the movie was great"), Example("a film was bad")))
    r = evaluate(model, tok, task)
    assert r["n"] == 2 and 0 <= r["accuracy"] <= 1 and r["loss"] > 0
    assert evaluate(model, tok, task, [])["n"] == 0
