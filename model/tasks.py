"""Built-in tasks: data sets the project generates itself, so a demo needs no download.

"builtin:sentiment" is templated movie-review sentences labelled positive/negative. The prompt
ends in "Label:" and the verbalizer is " A" (negative) / " B" (positive): letters that carry no
sentiment, so a pretrained model scores near chance zero-shot (it has no reason to prefer either
letter by sentiment) while the sentiment itself is plainly visible in its hidden states. Learning
the task means learning that mapping, which a zeroth-order swarm does in minutes when only a few
small tensors are trainable (see docs/data.md).

Generation is a pure function of the word lists below: every node, on every machine, derives the
same examples and the same train/held-out split (membership decided by a hash of the sentence).
"""
from __future__ import annotations

import hashlib
import itertools

__all__ = ["BUILTIN_TASKS", "builtin_examples", "builtin_spec", "builtin_vocabulary", "is_builtin"]

_SUBJECTS = [
    "the movie", "the film", "the story", "the acting", "the music", "the ending", "the plot",
    "the dialogue", "the cast", "the script", "the soundtrack", "the finale",
]
_POSITIVE = [
    "wonderful", "brilliant", "delightful", "excellent", "superb", "charming", "moving", "beautiful",
    "great", "fantastic", "enjoyable", "gripping", "clever", "touching", "stunning", "lovely",
]
_NEGATIVE = [
    "awful", "boring", "dull", "terrible", "horrible", "painful", "tedious", "clumsy", "bland",
    "dreadful", "lifeless", "weak", "messy", "annoying", "forgettable", "stupid",
]
_FRAMES = [
    "{s} was {a} .",
    "i thought {s} was {a} .",
    "honestly , {s} felt {a} .",
    "{s} is {a} from start to finish .",
    "everyone agreed that {s} was {a} .",
    "in the end {s} seemed {a} .",
]
_ADVERBS = ["", "really ", "truly ", "quite "]

# One in this many sentences (by hash) is held out for evaluation.
_EVAL_EVERY = 10

BUILTIN_TASKS = {
    "builtin:sentiment": {
        "kind": "classification",
        "template": "{text} Label:",
        "verbalizer": [" A", " B"],  # index = label: 0 negative, 1 positive
        "text_column": "text",
        "label_column": "label",
    },
}


def is_builtin(name: str) -> bool:
    return isinstance(name, str) and name.startswith("builtin:")


def builtin_spec(name: str) -> dict:
    """The task spec (kind, template, verbalizer, columns) of a built-in task, as a plain dict."""
    if name not in BUILTIN_TASKS:
        known = ", ".join(sorted(BUILTIN_TASKS))
        raise KeyError(f"unknown built-in task {name!r} (known: {known})")
    spec = dict(BUILTIN_TASKS[name])
    spec["verbalizer"] = list(spec["verbalizer"])
    return spec


def _in_eval(text: str) -> bool:
    digest = hashlib.blake2b(b"onebyte-task-split-v1" + text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % _EVAL_EVERY == 0


def _all_rows() -> list[dict]:
    rows = []
    for frame, subject, adverb in itertools.product(_FRAMES, _SUBJECTS, _ADVERBS):
        for label, adjectives in ((0, _NEGATIVE), (1, _POSITIVE)):
            for adj in adjectives:
                rows.append({"text": frame.format(s=subject, a=adverb + adj), "label": label})
    # A stable, well-mixed order (sorted by hash) so that a prefix is a fair sample of both labels.
    rows.sort(key=lambda r: hashlib.blake2b(r["text"].encode(), digest_size=8).digest())
    return rows


def builtin_examples(name: str, split: str = "train") -> list[dict]:
    """Rows {"text", "label"} of a built-in task; split is "train" or "eval" (held out)."""
    builtin_spec(name)  # validates the name
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    want_eval = split == "eval"
    return [r for r in _all_rows() if _in_eval(r["text"]) == want_eval]


def builtin_vocabulary() -> list[str]:
    """Every word the built-in tasks use (the tiny test tokenizer gives each its own token)."""
    words = set()
    for part in _SUBJECTS + _POSITIVE + _NEGATIVE + _FRAMES + _ADVERBS:
        words.update(w for w in part.replace("{s}", " ").replace("{a}", " ").split() if w.isalpha())
    for spec in BUILTIN_TASKS.values():
        words.update(w.strip() for w in spec["verbalizer"])
        words.update(w for w in spec["template"].replace("{text}", " ").replace(":", " ").split())
    return sorted(words)
