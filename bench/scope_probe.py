"""One node, in one process, on SST-2 training rows: dev-free tuning of a trainable scope.

    python bench/scope_probe.py --scope top1 --lr 3e-4 --steps 1000 --json out.json

Trains with the exact Replica (the updates a daemon would apply) and the frozen-trunk cache
(model/trunk.py), and evaluates on *held-out training rows* (never dev.tsv): this is where
the defaults of the demo, `onebyte init --scope` and bench/sst2_swarm.py were chosen.
Prints one JSON line per evaluation and a final JSON object (with the command).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from onebyte.model import BatchSampler, Hyper, Replica, evaluate, load_model, load_task, make_loss_fn, update_seed
from onebyte.model.data import TaskSpec
from onebyte.model.scope import scope_preset
from onebyte.model.trunk import TrunkCache, first_trainable_layer

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
SPEC = TaskSpec(template="{sentence} It was", verbalizer=(" terrible", " great"), label_column="label")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data-dir", default=DEFAULT_DATA)
    ap.add_argument("--task", default="", help="a built-in task (e.g. builtin:sentiment) instead of SST-2")
    ap.add_argument("--scope", default="top1")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--q-scale", type=float, default=0.5)
    ap.add_argument("--g-normalize", default="none", choices=["none", "rms"])
    ap.add_argument("--lr-schedule", default="constant", choices=["constant", "linear"])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-n", type=int, default=2000)
    ap.add_argument("--holdout-n", type=int, default=400, help="held-out training rows used for evaluation")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trunk-file", default=None, help="keep the trunk cache in this file between runs")
    ap.add_argument("--swarm-nodes", type=int, default=1, help="Hyper.swarm_nodes (per-update lr scaling)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model, tok = load_model(a.model)
    n_layers = model.config.num_hidden_layers
    decay = a.steps if a.lr_schedule == "linear" else 0
    hyper = Hyper(lr=a.lr, eps=a.eps, q_scale=a.q_scale, g_normalize=a.g_normalize, lr_schedule=a.lr_schedule,
                  lr_decay_steps=decay, swarm_nodes=a.swarm_nodes, **scope_preset(a.scope, n_layers))
    rep = Replica(model, hyper)
    train = load_task(a.task, split="train") if a.task else load_task(os.path.join(a.data_dir, "train.tsv"), SPEC)
    pool = train.examples[:a.train_n]
    held = train.examples[a.train_n:a.train_n + a.holdout_n]
    k = first_trainable_layer(rep.model, rep.names)
    trunk = TrunkCache(rep.model, tok, k, base_hash=a.model, path=a.trunk_file) if k is not None else None
    if trunk is not None:
        trunk.fill([e.text for e in pool + held])
    setup_s = time.time() - t0
    loss_fn = make_loss_fn(train, tok, trunk=trunk)
    sampler = BatchSampler(len(pool), a.batch_size, 0)
    swarm = b"probe" * 6 + b"00"
    curve, losses, qs = [], [], []
    r = evaluate(rep.model, tok, train, held, trunk=trunk)
    curve.append({"step": 0, "accuracy": r["accuracy"], "loss": r["loss"]})
    print(json.dumps(curve[-1]), flush=True)
    t1 = time.time()
    for step in range(1, a.steps + 1):
        (q,), loss = rep.local_step(loss_fn, sampler.batch(pool, step), [(update_seed(swarm, b"n0", step), step)])
        losses.append(loss)
        qs.append(q)
        if step % a.eval_every == 0 or step == a.steps:
            r = evaluate(rep.model, tok, train, held, trunk=trunk)
            curve.append({"step": step, "accuracy": r["accuracy"], "loss": r["loss"],
                          "train_loss": sum(losses[-a.eval_every:]) / len(losses[-a.eval_every:]),
                          "mean_abs_q": sum(map(abs, qs[-a.eval_every:])) / len(qs[-a.eval_every:]),
                          "elapsed_s": round(time.time() - t1, 1)})
            print(json.dumps(curve[-1]), flush=True)
    out = {"command": " ".join([Path(sys.executable).name] + sys.argv), "scope": a.scope,
           "trainable_weights": rep.n_trainable, "first_trainable_layer": k, "hyper": hyper.to_dict(),
           "setup_s": round(setup_s, 1), "s_per_step": round((time.time() - t1) / a.steps, 4),
           "eval_set": f"train rows {a.train_n}..{a.train_n + a.holdout_n - 1} (held out)", "curve": curve,
           "clipped_q_fraction": sum(abs(q) == 127 for q in qs) / len(qs)}
    print(json.dumps({k2: v for k2, v in out.items() if k2 != "curve"}))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
