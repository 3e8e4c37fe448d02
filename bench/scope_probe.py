"""One node, in one process, on SST-2 training rows: dev-free choice of scope, step and noise.

    python bench/scope_probe.py --forwards 24000 --json out.json \
        --option "spsa:lr=1e-3,q_scale=0.1" --option "fzoo4:probes=4,q_scale=0.03125,lr=3e-4"

Each --option NAME:FIELD=VALUE,... is a set of genesis hyper fields (onebyte.model.Hyper) over
the --scope preset; every option trains from the base for the same number of forward passes
(SPSA spends 2 per update, N probes N + 1 per N updates) with the exact Replica (the updates a
daemon would apply) and the frozen-trunk cache (model/trunk.py), and is evaluated on
*held-out training rows* (never dev.tsv) every --eval-forwards. The table it prints gives each
option's held-out accuracy at equal forward passes and at equal wall time (the shortest run's
time), which is where the defaults of `onebyte init`, the demo and bench/sst2_swarm.py were
chosen (docs/results.md). One JSON line per evaluation, then the summary JSON (with the command).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from onebyte.model import BatchSampler, Hyper, Replica, Seeder, evaluate, load_model, load_task, make_loss_fn
from onebyte.model.data import TaskSpec
from onebyte.model.load import model_hash
from onebyte.model.scope import scope_preset
from onebyte.model.trunk import TrunkCache, first_trainable_layer

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
TEMPLATE = "Movie review: {sentence}\nSentiment:"
VERBALIZER = " negative, positive"


def parse_option(text: str) -> tuple[str, dict]:
    """"name:lr=1e-3,probes=4" -> ("name", {"lr": 0.001, "probes": 4})."""
    name, _, fields = text.partition(":")
    out = {}
    for item in filter(None, fields.split(",")):
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--option {text!r}: expected FIELD=VALUE, got {item!r}")
        for cast in (int, float):
            try:
                out[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[k] = v
    return name, out


def words(example, spec: TaskSpec) -> int:
    """Words of the row's text (the prompt's words around it do not count)."""
    return len(example.text.split()) - len(spec.template.replace("{sentence}", " ").replace("{text}", " ").split())


def forwards_per_update(hyper: Hyper) -> float:
    if hyper.probes == 1:
        return 2.0
    return (hyper.probes + (hyper.probe_baseline == "clean")) / hyper.probes


def train(name: str, fields: dict, a, model_loader, task, pool, held, trunk_path) -> dict:
    model, tok = model_loader()
    hyper_fields = {**scope_preset(a.scope, model.config.num_hidden_layers), **fields}
    updates = int(a.forwards / forwards_per_update(Hyper(**hyper_fields)))
    if hyper_fields.get("lr_schedule") == "linear":
        hyper_fields.setdefault("lr_decay_steps", updates)
    hyper = Hyper(**hyper_fields)
    rep = Replica(model, hyper)
    k = first_trainable_layer(rep.model, rep.names)
    trunk = TrunkCache(rep.model, tok, k, base_hash=model_hash(a.model), path=trunk_path) if k is not None else None
    if trunk is not None:
        texts = [e.text for e in pool + held]
        if a.trunk_from and trunk.missing(texts):  # one layer from a deeper scope's file, not k from the embeddings
            print(f"trunk cache: {trunk.fill_from(a.trunk_from, texts)} entries derived from {a.trunk_from}", flush=True)
        trunk.fill(texts)
    loss_fn = make_loss_fn(task, tok, trunk=trunk)
    sampler = BatchSampler(len(pool), a.batch_size, 0)
    seeder = Seeder.for_hyper(b"probe" * 6 + b"00", hyper)
    origin = b"n0" * 16

    def point(forwards: int, seconds: float, qs) -> dict:
        r = evaluate(rep.model, tok, task, held, trunk=trunk)
        p = {"option": name, "forwards": forwards, "seconds": round(seconds, 1), "accuracy": r["accuracy"],
             "loss": r["loss"], "mean_abs_q": (sum(map(abs, qs)) / len(qs)) if qs else None}
        print(json.dumps(p), flush=True)
        return p

    curve, qs, step, forwards, train_s = [point(0, 0.0, [])], [], 1, 0, 0.0
    per_step = round(forwards_per_update(hyper) * hyper.probes)
    next_eval = a.eval_forwards
    while forwards < a.forwards:
        probes = seeder.probes(origin, step, hyper.probes)
        t = time.perf_counter()
        got, _ = rep.local_step(loss_fn, sampler.batch(pool, step), probes)
        train_s += time.perf_counter() - t
        qs += got
        step += hyper.probes
        forwards += per_step
        if forwards >= next_eval or forwards >= a.forwards:
            curve.append(point(forwards, train_s, qs[-1000:]))
            next_eval += a.eval_forwards
    return {"option": name, "hyper": hyper.to_dict(), "trainable_weights": rep.n_trainable, "updates": step - 1,
            "s_per_forward": train_s / max(1, forwards), "clipped_q_fraction": sum(abs(q) == 127 for q in qs) / len(qs),
            "curve": curve}


def at_forwards(run: dict, f: int) -> dict | None:
    """The last evaluation at or below f forward passes."""
    pts = [p for p in run["curve"] if p["forwards"] <= f]
    return pts[-1] if pts else None


def at_seconds(run: dict, s: float) -> dict | None:
    pts = [p for p in run["curve"] if p["seconds"] <= s]
    return pts[-1] if pts else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--task", default="", help="a built-in task (e.g. builtin:sentiment, the demo's) instead of "
                    "SST-2; its own prompt, and its training split for both the pool and the held-out rows")
    ap.add_argument("--scope", default="top1")
    ap.add_argument("--option", action="append", default=[], metavar="NAME:FIELD=VALUE,...",
                    help="hyper fields of one option (repeatable); default: today's SPSA step")
    ap.add_argument("--forwards", type=int, default=24000, help="forward passes per option")
    ap.add_argument("--eval-forwards", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-n", type=int, default=8000, help="training pool: the first rows of train.tsv "
                    "(of at least --min-words words) before --holdout")
    ap.add_argument("--holdout", default="60000:62000", help="held-out training rows A:B used for evaluation "
                    "(those of at least --min-words words)")
    ap.add_argument("--min-words", type=int, default=0, help="pool rows of at least this many words: SST-2's "
                    "training rows are mostly phrases, its dev rows whole sentences")
    ap.add_argument("--holdout-min-words", type=int, default=None, help="held-out rows of at least this many "
                    "words (default: --min-words)")
    ap.add_argument("--template", default=TEMPLATE)
    ap.add_argument("--verbalizer", default=VERBALIZER)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trunk-file", default=None, help="keep the trunk cache in this file between runs")
    ap.add_argument("--trunk-from", default=None, help="derive missing cache entries from this trunk file of a "
                    "deeper scope (e.g. top2's for top1): the layers in between run on its entries")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    options = [parse_option(o) for o in a.option] or [("spsa", {"lr": 3e-4})]
    if a.task:
        task = load_task(a.task, split="train")
        spec = task.spec
    else:
        spec = TaskSpec(template=a.template, verbalizer=tuple(a.verbalizer.split(",")))
        task = load_task(os.path.join(a.data_dir, "train.tsv"), spec)
    lo, hi = (int(x) for x in a.holdout.split(":"))
    long_enough = [e for e in task.examples[:lo] if words(e, spec) >= a.min_words]
    if len(long_enough) < a.train_n:
        raise SystemExit(f"only {len(long_enough)} rows before --holdout {a.holdout} have {a.min_words}+ words")
    pool = long_enough[:a.train_n]
    held_words = a.min_words if a.holdout_min_words is None else a.holdout_min_words
    held = [e for e in task.examples[lo:hi] if words(e, spec) >= held_words]
    t0 = time.time()
    runs = [train(name, fields, a, lambda: load_model(a.model), task, pool, held, a.trunk_file)
            for name, fields in options]
    shortest = min(r["curve"][-1]["seconds"] for r in runs)
    table = [{"option": r["option"], "updates": r["updates"], "s_per_forward": round(r["s_per_forward"], 5),
              "accuracy_at_forwards": at_forwards(r, a.forwards)["accuracy"],
              "loss_at_forwards": at_forwards(r, a.forwards)["loss"],
              "accuracy_at_equal_time": (at_seconds(r, shortest) or r["curve"][0])["accuracy"],
              "best_accuracy": max(p["accuracy"] for p in r["curve"])} for r in runs]
    out = {"command": " ".join([Path(sys.executable).name] + sys.argv), "scope": a.scope, "forwards": a.forwards,
           "equal_time_s": shortest, "eval_set": f"train rows {lo}..{hi - 1} (held out) of {held_words}+ words: "
           f"{len(held)}", "train_pool": f"the first {a.train_n} rows of {a.min_words}+ words", "min_words": a.min_words,
           "task": a.task or "sst2", "template": spec.template, "verbalizer": list(spec.verbalizer), "batch_size": a.batch_size, "table": table,
           "runs": runs, "wall_s": round(time.time() - t0, 1),
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
