"""Replay and local-step benchmark: onebyte's fused kernel vs a MeZO-style baseline, side by side.

    python bench/replay.py --json out.json [--device cuda]

Model: shaped like SmolLM2-135M (LlamaConfig hidden 576, intermediate 1536, 30 layers, 9 heads,
3 kv heads, vocab 49152, tied embeddings: 134.5M fp32 parameters), random init. All parameters
are trainable (the worst case for replay).

- ours: Replica.replay() of B updates (B = 1 and the fused batch sizes), updates/s.
- baseline, in the style of the MeZO reference code: per update torch.manual_seed(seed), then per
  parameter z = torch.normal(0, 1, size) and param.add_(z, alpha=coef); updates/s (it has no
  fused form, so its fused rate is its single rate).
- step_overhead: Replica.local_step time / time of its own two forward passes (timed inside the
  step through the loss function) - 1, median over repetitions; batch 16 x 64 fixed tokens, on
  the real SmolLM2 when onebyte.model.load.load_model("smollm2") works, else on the random model.
  Also reported: best step time / best time of two separate forwards - 1, which drifting
  background load on a shared machine can distort. On CUDA the forwards run under bf16
  autocast by default (--step-dtype; the weights stay exact fp32) and further batch shapes
  can be measured with --step-batches (e.g. 16x64,32x128).
- kinds: fused replay of per-weight Rademacher noise (today's kernel, batches of 128) against
  low-rank noise (rank 1, model/lowrank.py, batches of 4096), on the `top1` scope and on the
  whole model, side by side in this run; the stream is what a swarm sends: --origins origins
  publishing consecutive steps (so consecutive low-rank updates of an origin share V).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

from onebyte.model import Hyper, Replica, Seeder

BATCHES = (8, 32, 128)
STEP_BATCH, STEP_LEN = 16, 64


def smollm2_shaped(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)  # model init only
    return LlamaForCausalLM(cfg).eval()


def timer(device):
    def now():
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()
    return now


def bench_replay(replica, shapes, device, now, reps, batches):
    """updates/s of Replica.replay (B = 1 and each fused size) and of the MeZO-style baseline.

    Measurements alternate (ours B=1, baseline, ours B=8, baseline, ...) and the best of the
    repetitions is kept, so load that comes and goes on a shared machine hits both sides."""
    params = [torch.zeros(s, device=device) for s in shapes]  # the baseline's own weights

    def baseline_once(r):  # MeZO reference style: manual_seed, then torch.normal + add_ per tensor
        t = now()
        torch.manual_seed(1000 + r)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.size(), device=p.device, dtype=p.dtype)
            p.add_(z, alpha=-1e-6 * 3.0)
        return now() - t

    baseline_once(0)  # warms the allocator
    seed, ours, base = 1, {b: float("inf") for b in (1,) + tuple(batches)}, float("inf")
    for r in range(reps):
        for b in ours:
            if b >= 64 and r >= max(2, reps // 2):
                continue  # big batches are long: fewer repetitions
            ups = [(seed + i, (i * 37) % 255 - 127, 1) for i in range(b)]
            seed += b
            t = now()
            replica.replay(ups)
            ours[b] = min(ours[b], now() - t)
            base = min(base, baseline_once(r + 1))
    del params
    return {b: b / t for b, t in ours.items()}, 1.0 / base


def swarm_stream(window: int, n: int, origins: int, first: int) -> list:
    """n updates of `origins` origins interleaved, each on consecutive steps from `first`."""
    seeder = Seeder(b"bench-replay" + bytes(20), window)
    return [seeder.update(bytes([i % origins]) * 32, first + i // origins, (i * 37) % 255 - 127) for i in range(n)]


def bench_kinds(device, now, reps: int, origins: int, updates: int) -> dict:
    """updates/s of fused replay per perturbation kind and scope, alternating kinds per repetition."""
    from onebyte.model.scope import scope_preset
    out = {}
    for scope in ("top1", "all"):
        kw = {"trainable": scope_preset("top1", 30)["trainable"]} if scope == "top1" else {}
        reps_ = {"rademacher": Replica(smollm2_shaped(), Hyper(lr=1e-6, **kw), device),
                 "lowrank": Replica(smollm2_shaped(), Hyper(lr=1e-6, perturbation="lowrank", **kw), device)}
        n = {"rademacher": min(updates, 512 if scope == "all" else updates), "lowrank": updates}
        best = {k: float("inf") for k in reps_}
        for k, r in reps_.items():   # compile / warm up
            r.replay(swarm_stream(r.hyper.lowrank_window if k == "lowrank" else 0, 8, origins, 1))
        first = 100
        for _ in range(reps):
            for k, r in reps_.items():
                ups = swarm_stream(r.hyper.lowrank_window if k == "lowrank" else 0, n[k], origins, first)
                t = now()
                r.replay(ups)
                best[k] = min(best[k], (now() - t) / n[k])
            first += updates // origins + 1
        rate = {k: 1.0 / v for k, v in best.items()}
        out[scope] = {"trainable": reps_["rademacher"].n_trainable, "updates_per_s": rate,
                      "updates_timed": n, "lowrank_speedup": rate["lowrank"] / rate["rademacher"]}
        del reps_
    return out


def step_model(device):
    try:
        from onebyte.model.load import load_model
        model, _ = load_model("smollm2")  # float32 by default (dequantised GGUF)
        return model.eval(), "smollm2"
    except Exception as e:  # absent package or loader: fall back to the same shape, random
        print(f"[bench] real SmolLM2 unavailable ({type(e).__name__}: {str(e)[:120]}); using random weights",
              file=sys.stderr)
        return smollm2_shaped(), "random-smollm2-shaped"


def bench_step(replica, device, now, reps, shape=(STEP_BATCH, STEP_LEN), autocast_dtype=None):
    vocab = replica.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, vocab, shape, generator=g).to(device)

    def loss_fn(model, b):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(input_ids=b, labels=b).loss.item()

    with torch.no_grad():
        loss_fn(replica.model, batch)  # warm-up (allocator, kernels)
    inside = []

    def timed_loss(model, b):  # the step's own two forward passes, timed inside the step
        t = now()
        out = loss_fn(model, b)
        inside[-1] += now() - t
        return out

    ratios, steps, fwd2 = [], [], []
    for r in range(reps):
        t = now()
        with torch.no_grad():
            loss_fn(replica.model, batch)
            loss_fn(replica.model, batch)
        fwd2.append(now() - t)
        inside.append(0.0)
        t = now()
        replica.local_step(timed_loss, batch, [(777 + r, r + 1)])
        steps.append(now() - t)
        ratios.append(steps[-1] / inside[-1])
    # The ratio of a step to its *own* forwards is robust to load that drifts between
    # measurements on a shared machine; the median of the repetitions is reported.
    return statistics.median(ratios) - 1.0, steps, inside, fwd2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the result object to this path")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--reps", type=int, default=5, help="repetitions per measurement (best is kept)")
    ap.add_argument("--step-reps", type=int, default=3, help="interleaved local-step / two-forward pairs")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="fused batch sizes")
    ap.add_argument("--step-dtype", choices=["fp32", "bf16"], help="forward precision of the local step "
                    "(default: bf16 autocast on cuda, fp32 on cpu)")
    ap.add_argument("--step-batches", default=f"{STEP_BATCH}x{STEP_LEN}",
                    help="local-step batch shapes, rows x tokens; the first gives step_overhead")
    ap.add_argument("--origins", type=int, default=4, help="origins of the kinds' update stream")
    ap.add_argument("--kind-updates", type=int, default=4096, help="updates per timed replay in the kinds part")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/replay.py: --device cuda needs a CUDA build of torch and a GPU")
    device = torch.device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    batches = tuple(int(b) for b in args.batches.split(","))
    now = timer(device)
    t0 = time.perf_counter()
    load_start = os.getloadavg()  # recorded: other work on a shared machine slows both sides

    model = smollm2_shaped()
    n_params = sum(p.numel() for p in model.parameters())  # tied tensors once
    hyper = Hyper(lr=1e-6, max_fused=max(batches))
    rep = Replica(model, hyper, device)
    shapes = [tuple(p.shape) for p in rep.params]
    rep.replay([(i, 1, 1) for i in range(8)])  # compile / warm up the kernel (numba caches it on disk too)
    ours, base = bench_replay(rep, shapes, device, now, args.reps, batches)
    del rep, model

    kinds = bench_kinds(device, now, max(2, args.reps // 2), args.origins, args.kind_updates)

    smodel, which = step_model(device)
    srep = Replica(smodel, Hyper(lr=1e-6), device)
    step_dtype = args.step_dtype or ("bf16" if device.type == "cuda" else "fp32")
    autocast = torch.bfloat16 if step_dtype == "bf16" else None
    shapes_s = [tuple(int(v) for v in b.split("x")) for b in args.step_batches.split(",")]
    by_shape = {}
    for shape in shapes_s:
        ov, st, ins, f2 = bench_step(srep, device, now, args.step_reps, shape, autocast)
        by_shape["x".join(map(str, shape))] = {"step_overhead": ov, "local_step_s": st, "its_two_forwards_s": ins,
                                                "two_forwards_separately_s": f2}
    first = by_shape["x".join(map(str, shapes_s[0]))]
    overhead, steps, inside, fwd2 = (first["step_overhead"], first["local_step_s"], first["its_two_forwards_s"],
                                     first["two_forwards_separately_s"])

    fused_best = max(batches, key=lambda b: ours[b])
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "replay_speedup_single": ours[1] / base,
        "replay_speedup_fused": ours[fused_best] / base,
        "replay_speedup_fused_batch": fused_best,
        "replay_speedup_by_batch": {str(b): ours[b] / base for b in batches},
        "ours_updates_per_s": {str(b): ours[b] for b in (1,) + batches},
        "baseline_updates_per_s": base,
        "batch_sizes": list(batches),
        "lowrank_speedup_top1": kinds["top1"]["lowrank_speedup"],
        "lowrank_speedup_all": kinds["all"]["lowrank_speedup"],
        "kinds": kinds,
        "step_overhead": overhead,
        "step_samples_s": {"local_step": steps, "its_two_forwards": inside, "two_forwards_separately": fwd2},
        "step_overhead_vs_separate_forwards": min(steps) / min(fwd2) - 1.0,
        "step_model": which,
        "step_batch": list(shapes_s[0]),
        "step_dtype": step_dtype,
        "step_by_batch": by_shape,
        "param_count": n_params,
        "trainable_count": len(shapes) and sum(int(torch.Size(s).numel()) for s in shapes),
        "core_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "numba_version": __import__("numba").__version__,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "wall_s": time.perf_counter() - t0,
        "loadavg_start_end": [load_start[0], os.getloadavg()[0]],
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
