"""SST-2 fine-tuning benchmark: one node versus a synchronous swarm of four, same steps per node.

    .venv/bin/python bench/sst2.py            # reduced CPU default
    # the run in docs/results.md (hyper-parameters picked with --holdout-n 500, not on dev):
    .venv/bin/python bench/sst2.py --trunk-cache sst2-trunk.pt --train-n 3000 --steps 10000 \
        --eval-every 250 --batch-size 64 --lr 0.03 --lr-schedule linear --threads 1
    .venv/bin/python bench/sst2.py --device cuda --bf16 --steps 4000 --eval-n 872 --trainable '.*'

What runs (all through onebyte.model.Replica, so every weight change is the exact fixed-point
update a real swarm would apply):

* zero-shot: dev accuracy of the base model with prompt "<sentence> It was" and verbalizer
  " terrible" / " great" (MeZO's SST-2 recipe; candidate-restricted cross-entropy, model/data.py).
* 1 node: `--steps` local steps on the whole training set.
* 4 nodes, simulated exactly in one process as a *synchronous* swarm: in round r every node
  measures its SPSA step on the same weights W_r (its own seed and its own quarter of the
  training data), then all four updates are applied: W_{r+1} = W_r + sum of the four updates.
  Replica.local_step applies its own update at once, so after each node's measurement the
  trainable buffer is put back to W_r (an exact copy: the weights live on the fixed-point grid)
  and the four (seed, q, step) updates are replayed together at the end of the round. This is
  the swarm with zero network delay; a real swarm is slightly asynchronous (a node measures on
  weights missing the peers' updates still in flight).

Frozen-trunk cache (on by default when the final RMSNorm gain is the only trainable tensor):
everything below that norm is then the same function for l+, l- and every later step, so the
trunk's output at each prompt's last position is computed once per example (in length-sorted
batches) and each loss evaluation runs the model's own final norm module and the verbalizer
rows of its head on it. This is exact, not an approximation (checked against the full forward
at start-up), and turns a CPU step from seconds into about a millisecond; it is why the CPU run
can afford thousands of steps. With any other `--trainable`, or `--no-trunk-cache`, every loss
is a full forward pass.

Output: JSON (docs/results.json) and a plot (docs/results.png) of dev accuracy and loss against
per-node steps. Bytes exchanged count the one-byte q of every update; the seed is never sent
(it is derived from the origin and step that the record already carries).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from onebyte.model.data import classification_logits, encode_batch, label_token_ids
from onebyte.model import (BatchSampler, DataError, Hyper, HyperError, ModelLoadError, Replica, TaskSpec,
                           evaluate, load_model, load_task, make_loss_fn, shard, update_seed)

# The project's shared data folder sits beside the checkout (../shared/data/sst2).
DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
SPEC = TaskSpec(template="{sentence} It was", verbalizer=(" terrible", " great"), label_column="label")
SWARM_ID = hashlib.blake2b(b"onebyte-bench-sst2", digest_size=32).digest()


def origin(k: int) -> bytes:
    return hashlib.blake2b(b"bench-node-%d" % k, digest_size=16).digest()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA, help="folder with train.tsv and dev.tsv (SST-2 GLUE format)")
    p.add_argument("--task", default=None, help="a built-in task (e.g. builtin:sentiment) instead of SST-2")
    p.add_argument("--model", default="smollm2", help="model spec for onebyte.model.load_model")
    p.add_argument("--steps", type=int, default=1000, help="local steps per node (both runs)")
    p.add_argument("--nodes", type=int, default=4, help="swarm size of the second run")
    p.add_argument("--eval-every", type=int, default=50, help="evaluate every this many per-node steps")
    p.add_argument("--eval-n", type=int, default=0, help="dev examples per evaluation (0 = all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast forward passes (weights stay exact fp32)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--lr-schedule", default="constant", choices=("constant", "linear"),
                   help="Hyper.lr_schedule; 'linear' decays lr to 0 over --lr-decay-steps per-node steps")
    p.add_argument("--lr-decay-steps", type=int, default=0, help="for --lr-schedule linear (0 = --steps)")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--q-scale", type=float, default=0.02)
    p.add_argument("--trainable", default=r"model\.norm\.weight",
                   help="regex of perturbed parameters (default: the final RMSNorm gain, 576 weights)")
    p.add_argument("--train-n", type=int, default=2000,
                   help="training pool: the first N training rows (0 = all); the swarm shards this pool")
    p.add_argument("--no-trunk-cache", action="store_true", help="full forward for every loss (see above)")
    p.add_argument("--trunk-cache", default=None, metavar="PATH",
                   help="keep the trunk cache in this torch file between runs (keyed by a hash of the model "
                        "weights and the forward dtype; prompts missing from it are computed and added)")
    p.add_argument("--holdout-n", type=int, default=0,
                   help="evaluate on N training rows right after the pool instead of dev.tsv: for choosing "
                        "hyper-parameters without looking at dev")
    p.add_argument("--skip-single", action="store_true", help="run only the swarm (for quick tuning)")
    p.add_argument("--out", default="docs/results.json")
    p.add_argument("--plot", default="docs/results.png")
    return p.parse_args(argv)


class TrunkCache:
    """Pre-norm hidden state at each prompt's last position, computed once per example.

    Valid only while every weight below the final norm is frozen (the caller checks that the
    final norm gain is the replica's only trainable tensor)."""

    def __init__(self, model, tok, spec, autocast, batch_size: int = 32):
        self.model, self.tok, self.autocast, self.batch_size = model, tok, autocast, batch_size
        self.label_ids = label_token_ids(spec, tok)
        self.norm = model.base_model.norm  # the live module: its gain is the replica's trainable tensor
        self.head = model.get_output_embeddings()
        self.h: dict[str, torch.Tensor] = {}

    def fill(self, examples) -> None:
        device = self.norm.weight.device
        todo = sorted({e.text for e in examples if e.text not in self.h}, key=len)
        captured = {}
        hook = self.norm.register_forward_hook(lambda mod, inp, out: captured.__setitem__("x", inp[0]))
        try:
            with torch.inference_mode():
                for start in range(0, len(todo), self.batch_size):
                    texts = todo[start:start + self.batch_size]
                    ids, mask = encode_batch(self.tok, texts, device)
                    with torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None):
                        self.model.base_model(input_ids=ids, attention_mask=mask)
                    last = mask.sum(dim=1) - 1
                    rows = captured["x"][torch.arange(len(texts), device=device), last].float()
                    for text, row in zip(texts, rows):
                        self.h[text] = row.clone()
        finally:
            hook.remove()

    def load(self, path: str, key: str) -> int:
        """Take the rows of a cache file written by `save` for the same model weights and dtype."""
        if not os.path.exists(path):
            return 0
        saved = torch.load(path, map_location=self.norm.weight.device)
        if saved.get("key") != key:
            return 0  # another model, dtype or trunk: recompute rather than trust it
        self.h.update(saved["h"])
        return len(saved["h"])

    def save(self, path: str, key: str) -> None:
        tmp = path + ".tmp"
        torch.save({"key": key, "h": {t: v.cpu() for t, v in self.h.items()}}, tmp)
        os.replace(tmp, path)  # never leave a half-written cache behind

    def logits(self, examples) -> torch.Tensor:
        h = torch.stack([self.h[e.text] for e in examples])
        return (self.norm(h) @ self.head.weight[self.label_ids].T).float()

    def loss_fn(self, model, batch) -> float:
        with torch.inference_mode():
            logits = self.logits(batch)
            labels = torch.tensor([e.label for e in batch], device=logits.device)
            return float(torch.nn.functional.cross_entropy(logits, labels))

    def evaluate(self, model, examples) -> dict:
        with torch.inference_mode():
            logits = self.logits(examples)
            labels = torch.tensor([e.label for e in examples], device=logits.device)
            loss = float(torch.nn.functional.cross_entropy(logits, labels))
            acc = float((logits.argmax(-1) == labels).float().mean())
        return {"accuracy": acc, "loss": loss, "n": len(examples)}

    def self_check(self, examples) -> None:
        """The shortcut must give the full forward's logits (up to float summation order)."""
        with torch.inference_mode():
            full = classification_logits(self.model, self.tok, [e.text for e in examples],
                                         self.label_ids, self.autocast)
            fast = self.logits(examples)
        tol = 5e-2 if self.autocast is not None else 1e-3
        err = float((full - fast).abs().max())
        if not err <= tol:
            raise RuntimeError(f"trunk cache disagrees with the full forward (max |diff| {err:.3g})")
        self.max_abs_diff = err


def model_key(model, autocast) -> str:
    """Hash of every weight of the model (the trunk's function) and of the forward dtype."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(autocast).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Bench:
    def __init__(self, args):
        self.args = args
        torch.set_num_threads(args.threads)
        autocast = torch.bfloat16 if args.bf16 else None
        if args.bf16 and not str(args.device).startswith("cuda"):
            print("note: --bf16 on CPU runs bf16 autocast on CPU (slow on most CPUs)", file=sys.stderr)
        t = time.time()
        model, self.tok = load_model(args.model)
        self.load_s = time.time() - t
        if args.task:
            self.train = load_task(args.task, split="train")
            self.dev = load_task(args.task, split="eval")
        else:
            self.train = load_task(os.path.join(args.data_dir, "train.tsv"), SPEC)
            self.dev = load_task(os.path.join(args.data_dir, "dev.tsv"), SPEC)
        self.train_examples = self.train.examples[:args.train_n] if args.train_n > 0 else self.train.examples
        if args.holdout_n > 0:
            # Held-out training rows (never in the pool): tune on these, report dev.tsv once.
            if args.train_n <= 0 or args.train_n + args.holdout_n > len(self.train):
                raise DataError("--holdout-n needs --train-n > 0 and train_n + holdout_n <= the training rows")
            self.eval_set = f"train rows {args.train_n}..{args.train_n + args.holdout_n - 1} (held out)"
            self.dev_examples = self.train.examples[args.train_n:args.train_n + args.holdout_n]
        else:
            self.eval_set = "dev"
            n = len(self.dev) if args.eval_n <= 0 else min(args.eval_n, len(self.dev))
            self.dev_examples = self.dev.examples[:n]
        decay = (args.lr_decay_steps or args.steps) if args.lr_schedule == "linear" else 0
        self.hyper = Hyper(lr=args.lr, lr_schedule=args.lr_schedule, lr_decay_steps=decay, eps=args.eps,
                           q_scale=args.q_scale, trainable=args.trainable)
        self.replica = Replica(model, self.hyper, device=args.device)
        # The base weights as snapped onto the grid: both runs start from exactly these bits.
        self.base = self.replica.state.clone()
        self.autocast = autocast
        self.trunk = None
        norm_name = f"{model.base_model_prefix}.norm.weight"
        if not args.no_trunk_cache and self.replica.names == [norm_name] and self.train.spec.kind == "classification":
            t = time.time()
            self.trunk = TrunkCache(self.replica.model, self.tok, self.train.spec, autocast)
            key = model_key(self.replica.model, autocast) if args.trunk_cache else None
            self.trunk_loaded = self.trunk.load(args.trunk_cache, key) if args.trunk_cache else 0
            before = len(self.trunk.h)
            self.trunk.fill(self.dev_examples)
            self.trunk.fill(self.train_examples)
            if args.trunk_cache and len(self.trunk.h) > before:
                self.trunk.save(args.trunk_cache, key)
            self.trunk.self_check(self.dev_examples[:8])
            self.trunk_s = time.time() - t
            self.loss_fn = self.trunk.loss_fn
        else:
            self.loss_fn = make_loss_fn(self.train, self.tok, autocast_dtype=autocast)

    def eval(self) -> dict:
        t = time.time()
        if self.trunk is not None:
            r = self.trunk.evaluate(self.replica.model, self.dev_examples)
            r["eval_s"] = round(time.time() - t, 3)
            return r
        r = evaluate(self.replica.model, self.tok, self.dev, self.dev_examples, batch_size=32,
                     autocast_dtype=self.autocast)
        r["eval_s"] = round(time.time() - t, 2)
        return r

    def reset(self):
        with torch.no_grad():
            self.replica.state.copy_(self.base)
            self.replica._show()

    def run(self, nodes: int) -> dict:
        """`nodes` synchronous nodes for args.steps rounds; curve of dev metrics per eval."""
        a = self.args
        self.reset()
        pool = self.train_examples
        data = [pool] if nodes == 1 else [shard(pool, k, nodes) for k in range(nodes)]
        samplers = [BatchSampler(len(d), a.batch_size, seed=k) for k, d in enumerate(data)]
        curve, train_losses, qs = [], [], []
        t0 = time.time()
        step_s = 0.0
        for step in range(1, a.steps + 1):
            ts = time.time()
            start = self.replica.state.clone() if nodes > 1 else None
            round_updates, round_loss = [], 0.0
            for k in range(nodes):
                seed = update_seed(SWARM_ID, origin(k), step)
                batch = samplers[k].batch(data[k], step)
                (q,), loss = self.replica.local_step(self.loss_fn, batch, [(seed, step)])
                round_updates.append((seed, q, step))
                round_loss += loss / nodes
                qs.append(q)
                if nodes > 1:
                    with torch.no_grad():  # back to W_r: the next node measures on the same weights
                        self.replica.state.copy_(start)
                        self.replica._show()
            if nodes > 1:
                self.replica.replay(round_updates)
            step_s += time.time() - ts
            train_losses.append(round_loss)
            if step % a.eval_every == 0 or step == a.steps:
                r = self.eval()
                window = train_losses[-a.eval_every:]
                point = {"step": step, "accuracy": r["accuracy"], "loss": r["loss"],
                         "train_loss": sum(window) / len(window), "elapsed_s": round(time.time() - t0, 1)}
                curve.append(point)
                print(json.dumps({"nodes": nodes, **point}), flush=True)
        clipped = sum(abs(q) == 127 for q in qs)
        return {"nodes": nodes, "curve": curve, "final_accuracy": curve[-1]["accuracy"],
                "final_loss": curve[-1]["loss"], "updates": len(qs), "mean_abs_q": sum(map(abs, qs)) / len(qs),
                "clipped_q_fraction": clipped / len(qs), "wall_s": round(time.time() - t0, 1),
                "s_per_local_step": round(step_s / (a.steps * nodes), 6), "digest": self.replica.digest()}


def steps_to_reach(curve, target) -> int | None:
    for p in curve:
        if p["accuracy"] >= target:
            return p["step"]
    return None


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    zs = results["zero_shot"]
    for run, style in ((results["run_1node"], "o-"), (results.get("run_4node"), "s-")):
        if not run:
            continue
        steps = [0] + [p["step"] for p in run["curve"]]
        label = f"{run['nodes']} node" + ("s" if run["nodes"] > 1 else "")
        ax1.plot(steps, [zs["accuracy"]] + [p["accuracy"] for p in run["curve"]], style, label=label)
        ax2.plot(steps, [zs["loss"]] + [p["loss"] for p in run["curve"]], style, label=label + " (dev)")
    ax1.axhline(zs["accuracy"], color="gray", ls="--", label="zero-shot")
    ax1.set_xlabel("per-node steps")
    ax1.set_ylabel(f"dev accuracy (n={zs['n']})")
    ax2.set_xlabel("per-node steps")
    ax2.set_ylabel("dev loss (verbalizer cross-entropy)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{results['task']}: {results['model']}, trainable={results['hyper']['trainable']}, "
                 f"batch {results['batch_size']}", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.nodes < 1 or args.batch_size < 1:
        print("error: --steps, --eval-every, --nodes and --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        bench = Bench(args)
    except (ModelLoadError, DataError, HyperError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.time()
    zero = bench.eval()
    print(json.dumps({"zero_shot": zero}), flush=True)
    single = None if args.skip_single else bench.run(1)
    swarm = bench.run(args.nodes) if args.nodes > 1 else None
    results = {
        "task": args.task or "sst2",
        "model": args.model,
        "device": str(args.device) + (f" ({torch.cuda.get_device_name()})" if str(args.device).startswith("cuda")
                                      else f" ({platform.processor() or platform.machine()}, {args.threads} threads)"),
        "bf16_forward": args.bf16,
        "command": " ".join([os.path.basename(sys.executable), "bench/sst2.py"] + (argv if argv is not None else sys.argv[1:])),
        "hyper": bench.hyper.to_dict(),
        "n_trainable": bench.replica.n_trainable,
        "batch_size": args.batch_size,
        "steps_per_node": args.steps,
        "eval_every": args.eval_every,
        "eval_set": bench.eval_set,
        "eval_n": len(bench.dev_examples),
        "train_n": len(bench.train_examples),
        "model_load_s": round(bench.load_s, 1),
        "trunk_cache": None if bench.trunk is None else {
            "examples": len(bench.trunk.h), "loaded_from_file": bench.trunk_loaded, "build_s": round(bench.trunk_s, 1),
            "max_abs_logit_diff_vs_full_forward": bench.trunk.max_abs_diff},
        "zero_shot_accuracy": zero["accuracy"],
        "zero_shot": zero,
    }
    if single:
        results["dev_accuracy_1node"] = single["final_accuracy"]
        results["run_1node"] = single
    if swarm:
        results[f"dev_accuracy_{args.nodes}node"] = swarm["final_accuracy"]
        results[f"run_{args.nodes}node"] = swarm
        # Bytes on the wire for the updates themselves: one q byte each. A full-gradient data-parallel
        # exchange of the same trainable tensors would send n_trainable fp32 values per update.
        results["bytes_exchanged"] = {
            "updates": swarm["updates"], "bytes_per_update": 1, "total_update_bytes": swarm["updates"],
            "fp32_gradient_bytes_per_update_for_comparison": 4 * bench.replica.n_trainable,
        }
    if single and swarm:
        reach = steps_to_reach(swarm["curve"], single["final_accuracy"])
        results[f"steps_ratio_{args.nodes}node_to_match"] = None if reach is None else reach / args.steps
        results[f"steps_{args.nodes}node_to_match"] = reach
    results["total_wall_s"] = round(time.time() - t0, 1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    if args.plot and single:
        plot(results, args.plot)
    summary = {k: v for k, v in results.items() if not k.startswith("run_") and k != "hyper"}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
