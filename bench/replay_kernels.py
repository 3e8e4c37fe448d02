"""The two CPU replay kernels side by side: the fast simd kernel and the plain @njit fallback.

    python bench/replay_kernels.py [--json out.json] [--reps 5] [--batches 1,8,32,128]

Same model as bench/replay.py (SmolLM2-135M-shaped, random init, all 134.5M parameters
trainable). Per batch size B: B updates go through update_coefficients_many and plan_batches as in
Replica.replay, then each kernel replays them into its own copy of the weights with
replay_cpu(kernel=...); the two are timed alternately, best of --reps, and the two copies must
end bit-identical. Reports updates/s per kernel and plain's slowdown (simd rate / plain rate).
Only the kernel call is timed, so these rates sit slightly above bench/replay.py's, which
include computing the coefficients.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from onebyte.model import Hyper, Replica
from onebyte.model.grid import plan_batches, update_coefficients_many
from onebyte.model.replay_cpu import make_items, replay_cpu

sys.path.insert(0, str(Path(__file__).parent))
from replay import smollm2_shaped  # noqa: E402

KERNELS = ("simd", "plain")


def batches_of(rep, b, first_seed):
    seeds = list(range(first_seed, first_seed + b))
    qs = [(i * 37) % 255 - 127 for i in range(b)]
    coefs = update_coefficients_many(rep.grid, rep.hyper, seeds, qs, [1] * b)
    return plan_batches(rep.grid, seeds, coefs, max_fused=b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the result object to this path")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per measurement (best is kept)")
    ap.add_argument("--batches", default="1,8,32,128", help="fused batch sizes")
    args = ap.parse_args(argv)
    sizes = [int(b) for b in args.batches.split(",")]
    t0, load_start = time.perf_counter(), os.getloadavg()

    rep = Replica(smollm2_shaped(), Hyper(lr=1e-6, max_fused=max(sizes)))
    g = rep.grid
    items = make_items(g.offsets, g.sizes)
    states = {k: (rep.state.numpy().copy(), rep.flat.numpy().copy()) for k in KERNELS}
    mask = rep.noise.mask_words
    for k in KERNELS:  # compile (or load from numba's cache) before timing
        for _, keys, coef_t in batches_of(rep, 1, 0):
            replay_cpu(*states[k], keys, coef_t, items, g.quantum, mask, True, kernel=k)

    best = {k: {b: float("inf") for b in sizes} for k in KERNELS}
    seed = 1
    for _ in range(args.reps):
        for b in sizes:
            planned = batches_of(rep, b, seed)
            seed += b
            for k in KERNELS:  # alternate, so load that comes and goes hits both kernels
                t = time.perf_counter()
                for _, keys, coef_t in planned:
                    replay_cpu(*states[k], keys, coef_t, items, g.quantum, mask, True, kernel=k)
                best[k][b] = min(best[k][b], time.perf_counter() - t)
    identical = bool(np.array_equal(states["simd"][0], states["plain"][0])
                     and np.array_equal(states["simd"][1].view(np.uint32), states["plain"][1].view(np.uint32)))

    rates = {k: {str(b): b / best[k][b] for b in sizes} for k in KERNELS}
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "updates_per_s": rates,
        "plain_slowdown": {str(b): best["plain"][b] / best["simd"][b] for b in sizes},
        "bit_identical": identical,
        "param_count": int(g.total),
        "reps": args.reps,
        "core_count": os.cpu_count(),
        "numba_version": __import__("numba").__version__,
        "torch_version": torch.__version__,
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
    if not identical:
        sys.exit("bench/replay_kernels.py: the two kernels wrote different bits")
    return result


if __name__ == "__main__":
    main()
