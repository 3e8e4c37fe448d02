"""Data: tasks from TSV/CSV/JSONL files or built-in generators, the deterministic batch sampler,
and the loss functions the zeroth-order step measures.

Classification follows MeZO's prompt + verbalizer recipe (SST-2: "<sentence> It was" then
" terrible" / " great"). The loss is the cross-entropy of the true label among the verbalizer
candidates only: log-softmax over the logits of each label word's first token at the last prompt
position. MeZO uses this candidate-restricted likelihood; compared with full-vocabulary
cross-entropy it ignores how much mass the model puts on unrelated words, so the SPSA signal
(l+ - l-) measures exactly the thing accuracy depends on, and zero-shot loss is ~ln(K).

Language modelling ("lm") uses the mean next-token cross-entropy over the text.
"""
from __future__ import annotations

import csv
import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import tasks as _tasks

__all__ = [
    "DataError",
    "Example",
    "Task",
    "TaskSpec",
    "load_task",
    "BatchSampler",
    "shard",
    "make_loss_fn",
    "label_margins",
    "encode_batch",
    "label_token_ids",
]

DEFAULT_TEMPLATE = "{sentence} It was"
DEFAULT_VERBALIZER = (" terrible", " great")
MAX_TOKENS = 128  # prompts/texts are cut (from the left, keeping the prompt's end) to this length


class DataError(Exception):
    """A data set or task spec is unusable; the message is one line, meant for the user."""


@dataclass(frozen=True)
class Example:
    text: str                  # the full prompt (classification) or the text (lm)
    label: int | None = None   # index into the verbalizer; None for lm


@dataclass(frozen=True)
class TaskSpec:
    """How rows become examples; plain types only, so it can live in the genesis [task] table."""
    kind: str = "classification"            # "classification" | "lm"
    template: str = DEFAULT_TEMPLATE        # str.format over the row's columns (classification)
    verbalizer: tuple[str, ...] = DEFAULT_VERBALIZER  # label i -> word (first token is scored)
    text_column: str = "text"               # the column used by "lm"
    label_column: str = "label"

    def __post_init__(self):
        if self.kind not in ("classification", "lm"):
            raise DataError(f"task kind must be 'classification' or 'lm', got {self.kind!r}")
        object.__setattr__(self, "verbalizer", tuple(self.verbalizer))
        if self.kind == "classification":
            if len(self.verbalizer) < 2:
                raise DataError("a classification task needs a verbalizer with at least 2 words")
            if len(set(self.verbalizer)) != len(self.verbalizer):
                raise DataError(f"verbalizer words must be distinct: {list(self.verbalizer)}")
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
            except ValueError as exc:
                raise DataError(f"bad template {self.template!r}: {exc}") from None
            if not fields or any(not f.isidentifier() for f in fields):
                raise DataError(f"template {self.template!r} must name columns like {{sentence}}")

    def columns(self) -> list[str]:
        if self.kind == "lm":
            return [self.text_column]
        fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
        return sorted(set(fields)) + [self.label_column]

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "template": self.template, "verbalizer": list(self.verbalizer),
             "text_column": self.text_column, "label_column": self.label_column}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        known = {"kind", "template", "verbalizer", "text_column", "label_column"}
        unknown = set(d) - known
        if unknown:
            raise DataError(f"unknown task spec keys: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Task:
    name: str
    spec: TaskSpec
    examples: tuple[Example, ...] = field(repr=False)

    def __len__(self) -> int:
        return len(self.examples)


# --------------------------------------------------------------------------- reading files

def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows as (line number, {column: value}) plus the column names seen."""
    suffix = path.suffix.lower()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if suffix == ".jsonl":
                rows, columns = [], set()
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                    if not isinstance(obj, dict):
                        raise DataError(f"{path}:{lineno}: each JSONL line must be an object")
                    columns.update(obj)
                    rows.append((lineno, obj))
                return sorted(columns), rows
            if suffix not in (".tsv", ".csv"):
                raise DataError(f"unsupported data file {path.name}: use .tsv, .csv or .jsonl")
            # QUOTE_NONE for TSV: SST-2's sentences contain bare quote characters.
            quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",", quoting=quoting)
            columns = list(reader.fieldnames or [])
            rows = [(lineno, row) for lineno, row in enumerate(reader, 2)]
            return columns, rows
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"data path is a folder, not a file: {path}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{path}: malformed {suffix[1:].upper()} ({exc})") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse_label(value, n_labels: int, where: str) -> int:
    if isinstance(value, bool) or value is None:
        raise DataError(f"{where}: bad label {value!r} (expected an integer in 0..{n_labels - 1})")
    try:
        label = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise DataError(f"{where}: bad label {value!r} (expected an integer in 0..{n_labels - 1})") from None
    if not 0 <= label < n_labels:
        raise DataError(f"{where}: label {label} out of range 0..{n_labels - 1}")
    return label


def _rows_to_examples(rows, spec: TaskSpec, source: str) -> list[Example]:
    out = []
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        if spec.kind == "lm":
            text = row.get(spec.text_column)
            if text is None:
                raise DataError(f"{where}: missing column {spec.text_column!r}")
            text = str(text).strip()
            if text:
                out.append(Example(text=text))
            continue
        values = {}
        for col in spec.columns()[:-1]:
            v = row.get(col)
            if v is None:
                raise DataError(f"{where}: missing column {col!r}")
            # SST-2 sentences end in a space; the template supplies the spacing.
            values[col] = " ".join(str(v).split())
        label = _parse_label(row.get(spec.label_column), len(spec.verbalizer), where)
        out.append(Example(text=spec.template.format(**values), label=label))
    return out


def load_task(path_or_name: str, spec: TaskSpec | dict | None = None, split: str = "train") -> Task:
    """A task from a .tsv/.csv/.jsonl file or a built-in name ("builtin:sentiment").

    spec: how to read the rows (defaults to SST-2's template and verbalizer for files, and to the
    built-in task's own spec for built-ins). split: only for built-ins, "train" or "eval"; a file
    is one split, so the node config names separate train and eval files.
    """
    if isinstance(spec, dict):
        spec = TaskSpec.from_dict(spec)
    name = str(path_or_name)
    if _tasks.is_builtin(name):
        try:
            builtin = TaskSpec.from_dict(_tasks.builtin_spec(name))
            rows = _tasks.builtin_examples(name, split)
        except (KeyError, ValueError) as exc:
            raise DataError(str(exc).strip("'\"")) from None
        spec = spec or builtin
        examples = _rows_to_examples(enumerate(rows, 1), spec, name)
        return Task(name=f"{name}/{split}", spec=spec, examples=tuple(examples))
    spec = spec or TaskSpec(template=DEFAULT_TEMPLATE, verbalizer=DEFAULT_VERBALIZER)
    path = Path(name).expanduser()
    columns, rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path} has no data rows")
    if path.suffix.lower() != ".jsonl":
        missing = [c for c in spec.columns() if c not in columns]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; found {columns}")
    examples = _rows_to_examples(rows, spec, str(path))
    if not examples:
        raise DataError(f"{path} has no non-empty examples")
    return Task(name=str(path), spec=spec, examples=tuple(examples))


# --------------------------------------------------------------------------- sampling

class BatchSampler:
    """Batch for (seed, step) is a pure function: restarts and benchmarks reproduce it exactly.

    Examples are drawn without replacement within an epoch; each epoch's order sorts indices by
    blake2b(seed, epoch, index), which (unlike torch/numpy generators) is the same on every
    platform and library version. step counts from 1, like update steps.
    """

    def __init__(self, n_examples: int, batch_size: int, seed: int):
        if n_examples <= 0:
            raise DataError("cannot sample batches from an empty dataset")
        if batch_size <= 0:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed = n_examples, batch_size, int(seed)
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if len(self._orders) > 2:  # only the current and the next epoch are ever needed
                self._orders.clear()
            prefix = b"onebyte-batch-v1" + (self.seed % 2**64).to_bytes(8, "little") + epoch.to_bytes(8, "little")
            key = lambda i: hashlib.blake2b(prefix + i.to_bytes(8, "little"), digest_size=8).digest()
            self._orders[epoch] = sorted(range(self.n), key=key)
        return self._orders[epoch]

    def indices(self, step: int) -> list[int]:
        if step < 1:
            raise ValueError(f"steps count from 1, got {step}")
        start = (step - 1) * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            epoch, offset = divmod(pos, self.n)
            out.append(self._order(epoch)[offset])
        return out

    def batch(self, examples: Sequence[Example], step: int) -> list[Example]:
        return [examples[i] for i in self.indices(step)]


def shard(examples: Sequence[Example], index: int, count: int) -> tuple[Example, ...]:
    """Every count-th example starting at index: disjoint data for node `index` of `count`."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} not in 0..{count - 1}")
    return tuple(examples[index::count])


# --------------------------------------------------------------------------- losses

def label_token_ids(spec: TaskSpec, tokenizer) -> list[int]:
    """First token id of each verbalizer word, as it appears after the prompt."""
    ids = []
    for word in spec.verbalizer:
        toks = tokenizer(word, add_special_tokens=False)["input_ids"]
        if not toks:
            raise DataError(f"verbalizer word {word!r} encodes to no tokens")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise DataError(f"verbalizer words {list(spec.verbalizer)} share a first token with this tokenizer")
    return ids


def encode_batch(tokenizer, texts: Sequence[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and attention mask.

    Right padding keeps every real token at its natural position (left padding shifts rotary
    positions in some transformers versions), and with a causal mask the pads after a sequence
    cannot change its logits; the last real position is found from the mask.
    """
    encoded = [tokenizer(t)["input_ids"][-MAX_TOKENS:] for t in texts]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
        mask[i, : len(e)] = 1
    return ids.to(device), mask.to(device)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def classification_logits(model, tokenizer, texts, label_ids, autocast_dtype=None, trunk=None) -> torch.Tensor:
    """[batch, K] fp32 logits of the verbalizer tokens at each prompt's last position.

    With a TrunkCache (model/trunk.py) only the layers above the frozen trunk run."""
    device = _model_device(model)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        if trunk is not None:
            h = trunk.last_hidden(texts)
        else:
            # logits_to_keep would cut the vocab projection to one position, but positions differ
            # per row under right padding; compute hidden states and project only the rows we need.
            # base_model is the decoder stack under the LM head (model.model for Llama).
            ids, mask = encode_batch(tokenizer, texts, device)
            hidden = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(dim=1) - 1
            h = hidden[torch.arange(len(texts), device=device), last]
        head = model.get_output_embeddings()
        logits = h @ head.weight[label_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[label_ids]
        return logits.float()


def lm_token_loss(model, tokenizer, texts, autocast_dtype=None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-token next-token cross-entropy and correctness over the non-pad tokens (flattened,
    text after text), and how many of them each text has."""
    device = _model_device(model)
    ids, mask = encode_batch(tokenizer, texts, device)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        logits = model(input_ids=ids, attention_mask=mask).logits
    logits = logits[:, :-1].float()
    target = ids[:, 1:]
    keep = mask[:, 1:].bool()
    ce = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="none")
    correct = (logits[keep].argmax(-1) == target[keep]).float()
    return ce, correct, keep.sum(dim=1).tolist()


def label_margins(logits: torch.Tensor, labels) -> torch.Tensor:
    """[B]: each row's label logit minus the log-sum-exp of the other labels' (for two labels,
    the difference of the two logits).

    Cross-entropy's gradient is this margin's times (1 - p_label): rows the model already gets
    right contribute almost nothing, so on a task the model mostly solves a measurement along
    a direction rests on the few wrong rows of the batch. The margin moves on every row: a
    peer audit (node/train/audit.py) measures it, to see the sign of an update sooner."""
    labels = torch.as_tensor(labels, device=logits.device)
    own = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return own - torch.logsumexp(others, dim=1)


def make_loss_fn(task: Task | TaskSpec, tokenizer, autocast_dtype: torch.dtype | None = None, trunk=None
                 ) -> Callable[[torch.nn.Module, Sequence[Example]], float]:
    """loss_fn(model, batch) -> mean loss as a Python float, computed under inference_mode;
    loss_fn.per_example(model, batch) -> each example's loss (a float64 CPU tensor), what a
    private step clips one by one (model/privacy.py); for a classification task
    loss_fn.margin(model, batch) -> minus the mean label margin (label_margins), what a peer
    audit measures (node/train/audit.py).

    autocast_dtype (e.g. torch.bfloat16 on GPU) runs the forward in that precision while the
    weights stay exact fp32 on their fixed-point grid; the loss is reduced in fp32. A
    TrunkCache (classification only) runs just the layers above the frozen trunk.
    """
    spec = task.spec if isinstance(task, Task) else task
    if spec.kind == "lm":
        def lm_loss(model, batch):   # the mean over every token of the batch
            with torch.inference_mode():
                ce, _, _ = lm_token_loss(model, tokenizer, [e.text for e in batch], autocast_dtype)
                return float(ce.mean())

        def lm_losses(model, batch):   # [B]: each text's mean token loss
            with torch.inference_mode():
                ce, _, lengths = lm_token_loss(model, tokenizer, [e.text for e in batch], autocast_dtype)
                return torch.stack([r.mean() for r in torch.split(ce.double().cpu(), lengths)])
        lm_loss.per_example = lm_losses
        return lm_loss
    else:
        label_ids = label_token_ids(spec, tokenizer)

        def scored(model, batch):   # [B, K] label-word logits, [B] labels (under inference_mode)
            logits = classification_logits(model, tokenizer, [e.text for e in batch], label_ids,
                                           autocast_dtype, trunk)
            return logits, torch.tensor([e.label for e in batch], device=logits.device)

        def losses(model, batch):   # [B]: each example's cross-entropy over the label words
            with torch.inference_mode():
                logits, labels = scored(model, batch)
                return torch.nn.functional.cross_entropy(logits, labels, reduction="none").double().cpu()

        def margin_loss(model, batch):   # minus the mean label margin (what a peer audit measures)
            with torch.inference_mode():
                return float(-label_margins(*scored(model, batch)).double().mean())

    def loss_fn(model, batch):
        return float(losses(model, batch).mean())
    loss_fn.per_example = losses
    loss_fn.margin = margin_loss
    return loss_fn
