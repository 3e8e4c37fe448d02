"""Held-out evaluation: accuracy and loss of the current weights on a task's examples."""
from __future__ import annotations

from typing import Sequence

import torch

from .data import Example, Task, classification_logits, label_token_ids, lm_token_loss

__all__ = ["evaluate"]


def evaluate(model, tokenizer, task: Task, examples: Sequence[Example] | None = None,
             batch_size: int = 32, autocast_dtype: torch.dtype | None = None, trunk=None) -> dict:
    """{"accuracy", "loss", "n"} over `examples` (default: all of task.examples).

    classification: accuracy = argmax over the verbalizer candidates equals the label; loss = the
    same candidate-restricted cross-entropy the training loss uses, so the two are comparable.
    lm: accuracy = next-token top-1 accuracy, loss = mean next-token cross-entropy, both per
    token; n counts examples in both cases. `trunk`: a TrunkCache for classification.
    """
    examples = task.examples if examples is None else examples
    if len(examples) == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    total_loss, total_correct, total_count = 0.0, 0.0, 0
    label_ids = label_token_ids(task.spec, tokenizer) if task.spec.kind == "classification" else None
    # Batches of similar length waste less compute on padding; the sums do not depend on order.
    ordered = sorted(examples, key=lambda e: len(e.text))
    with torch.inference_mode():
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start:start + batch_size]
            texts = [e.text for e in chunk]
            if label_ids is not None:
                logits = classification_logits(model, tokenizer, texts, label_ids, autocast_dtype, trunk)
                labels = torch.tensor([e.label for e in chunk], device=logits.device)
                ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                correct = (logits.argmax(-1) == labels).float()
            else:
                ce, correct, _ = lm_token_loss(model, tokenizer, texts, autocast_dtype)
            total_loss += float(ce.sum())
            total_correct += float(correct.sum())
            total_count += int(ce.numel())
    return {"accuracy": total_correct / total_count, "loss": total_loss / total_count, "n": len(examples)}
