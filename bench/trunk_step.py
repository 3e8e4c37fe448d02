"""Local-step time with and without the frozen-trunk cache, on CPU or CUDA.

    python bench/trunk_step.py --device cuda --json trunk_step.json

Model: SmolLM2-135M's shape with bench/gpu_check.py's portable random init (or --model tiny),
the built-in sentiment task's prompts (tokenised with the tiny model's tokenizer, whose ids
fit SmolLM2's vocabulary), scope `top1` (every weight of the top layer and the
final norm) unless --scope says otherwise. Times Replica.local_step (three passes over the
trainable weights plus two losses) with the loss run through the full model and through the
trunk cache, median of --reps steps each, batch --batch-size; bf16 autocast on CUDA.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import build  # noqa: E402

from onebyte.model import BatchSampler, Hyper, Replica, load_model, load_task, make_loss_fn  # noqa: E402
from onebyte.model.load import tiny_tokenizer  # noqa: E402
from onebyte.model.scope import scope_preset  # noqa: E402
from onebyte.model.trunk import TrunkCache, first_trainable_layer  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="smollm2-shaped", choices=["smollm2-shaped", "tiny"])
    ap.add_argument("--scope", default="top1")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    tok = tiny_tokenizer()  # its ids fit SmolLM2's vocabulary; prompts of a few words each
    model = build(a.model) if a.model == "smollm2-shaped" else load_model("tiny")[0]
    rep = Replica(model, Hyper(lr=1e-4, **scope_preset(a.scope, model.config.num_hidden_layers)), dev)
    task = load_task("builtin:sentiment", split="train")
    examples = task.examples[:a.examples]
    autocast = torch.bfloat16 if dev.type == "cuda" else None
    k = first_trainable_layer(rep.model, rep.names)
    t0 = time.perf_counter()
    trunk = TrunkCache(rep.model, tok, k)
    with torch.autocast(dev.type, dtype=autocast, enabled=autocast is not None):
        trunk.fill([e.text for e in examples], batch_size=64)
    fill_s = time.perf_counter() - t0
    sampler = BatchSampler(len(examples), a.batch_size, 0)
    out = {"command": " ".join([Path(sys.executable).name] + sys.argv), "device": str(dev),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "model": a.model,
           "scope": a.scope, "trainable_weights": rep.n_trainable, "first_trainable_layer": k,
           "batch_size": a.batch_size, "autocast": str(autocast), "trunk_fill_s": fill_s,
           "trunk_examples": len(trunk.h), "torch_version": torch.__version__}
    for name, t in (("full_forward", None), ("trunk_cache", trunk)):
        loss_fn = make_loss_fn(task, tok, autocast_dtype=autocast, trunk=t)
        times = []
        for step in range(1, a.reps + 3):
            t1 = time.perf_counter()
            rep.local_step(loss_fn, sampler.batch(examples, step), [(step, step)])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step > 2:  # warm-up
                times.append(time.perf_counter() - t1)
        out[f"{name}_step_s"] = statistics.median(times)
    out["speedup"] = out["full_forward_step_s"] / out["trunk_cache_step_s"]
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
