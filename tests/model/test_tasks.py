"""The built-in demo task: deterministic, balanced, disjoint splits."""
from onebyte.model.data import load_task
from onebyte.model.tasks import BUILTIN_TASKS, builtin_examples, builtin_vocabulary


def test_builtin_sentiment_is_deterministic_and_split():
    train, held = builtin_examples("builtin:sentiment", "train"), builtin_examples("builtin:sentiment", "eval")
    assert train == builtin_examples("builtin:sentiment", "train")
    texts_train, texts_eval = {r["text"] for r in train}, {r["text"] for r in held}
    assert not texts_train & texts_eval
    assert len(held) > 500 and len(train) > 5 * len(held)
    for rows in (train, held):
        share = sum(r["label"] for r in rows) / len(rows)
        assert 0.4 < share < 0.6  # balanced, so chance accuracy is ~50%
        # the hash order mixes labels: no long runs of one label at the start
        assert 0 < sum(r["label"] for r in rows[:20]) < 20


def test_load_task_builtin_uses_its_spec():
    task = load_task("builtin:sentiment", split="eval")
    spec = BUILTIN_TASKS["builtin:sentiment"]
    assert task.spec.template == spec["template"] and list(task.spec.verbalizer) == spec["verbalizer"]
    assert all(e.text.endswith(" Label:") and e.label in (0, 1) for e in task.examples)
    assert task.name == "builtin:sentiment/eval"


def test_vocabulary_covers_every_word():
    vocab = set(builtin_vocabulary())
    for r in builtin_examples("builtin:sentiment", "eval")[:200]:
        assert all(w in vocab for w in r["text"].split() if w.isalpha())
    assert {"A", "B", "Label"} <= vocab
