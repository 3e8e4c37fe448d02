"""Replay kernel layouts timed against each other on one CUDA device (the kernel alone).

    python bench/gpu_kernels.py --json kernels.json

The flat buffer has the size of SmolLM2-135M's parameters (134.5M fp32) cut into its 272
tensors; each variant applies the same batches of B random updates (B = 1, 8, 32, 128).
Reported per variant and B: median kernel time (CUDA events, triton.testing.do_bench),
updates/s, and the bandwidth that time implies for one read and one write of the weights.
Before timing, every variant's result is compared bit for bit with the `lanes_first`
default on the same input (a fresh copy each time). Also measured in the same run: a
device-to-device copy of the buffer (the memory ceiling) for reference.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from onebyte.model import Hyper
from onebyte.model.grid import build_grid, to_state
from onebyte.model.replay_triton import TritonReplay

VARIANTS = [  # (layout, words per program, warps)
    ("lanes_first", 128, 4),
    ("lanes_first", 64, 2),
    ("lanes_first", 256, 8),
    ("words_first", 16, 4),
]


def smollm2_shapes():
    h, i, v, layers = 576, 1536, 49152, 30
    per_layer = [(h,), (h,), (i, h), (i, h), (h, i), (h, h), (h // 3, h), (h, h), (h // 3, h)]
    return [(v, h), (h,)] + per_layer * layers  # embeddings (tied head), final norm, 30 blocks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the result object here")
    ap.add_argument("--batches", default="1,8,32,128")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_kernels.py: needs a CUDA device")
    import triton
    from triton.testing import do_bench
    dev = torch.device("cuda")
    shapes = smollm2_shapes()
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=g) * 0.05 for s in shapes]
    grid = build_grid([f"t{j:03d}" for j in range(len(shapes))], tensors, Hyper(lr=1e-6))
    base = to_state(torch.cat([t.reshape(-1) for t in tensors]), grid).to(dev)   # int64 quanta
    n = base.numel()
    rnd = np.random.default_rng(1)
    out = {"command": " ".join([Path(sys.executable).name] + sys.argv), "gpu": torch.cuda.get_device_name(dev),
           "torch_version": torch.__version__, "triton_version": triton.__version__, "elements": n,
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "variants": {}}

    work, flat = torch.empty_like(base), torch.empty(n, dtype=torch.float32, device=dev)
    copy_ms = do_bench(lambda: work.copy_(base), warmup=50, rep=300, return_mode="median")
    out["d2d_copy_gb_per_s"] = 2 * 8 * n / copy_ms / 1e6

    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        keys = rnd.integers(0, 2**63, size=b, dtype=np.int64).view(np.uint64) * np.uint64(2) + np.uint64(1)
        coef_t = rnd.integers(-3, 4, size=(len(shapes), b), dtype=np.int32)
        want = None
        for layout, words, nw in VARIANTS:
            name = f"{layout}/w{words}/nw{nw}"
            tr = TritonReplay(grid, dev, layout=layout, words=words, num_warps=nw)
            x = base.clone()
            tr.launch(x, flat, keys, coef_t, True)
            if want is None:
                want = x
            same = bool(torch.equal(x, want))
            work.copy_(base)
            ms = do_bench(lambda: tr.launch(work, flat, keys, coef_t, True), warmup=25, rep=200, return_mode="median")
            rec = out["variants"].setdefault(name, {})
            # bytes per weight and batch: int64 state read + written, fp32 weight written
            rec[str(b)] = {"ms": ms, "updates_per_s": b / ms * 1e3, "implied_gb_per_s": 20 * n / ms / 1e6,
                           "bit_identical_to_default": same}
            print(f"B={b:4d} {name:24s} {ms:8.3f} ms {b / ms * 1e3:10.0f} upd/s  same={same}", flush=True)
    out["all_bit_identical"] = all(r["bit_identical_to_default"] for v in out["variants"].values() for r in v.values())
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0 if out["all_bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
