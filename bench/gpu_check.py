"""CUDA acceptance check: CUDA tests pass, and CUDA and CPU replicas agree bit for bit.

    python bench/gpu_check.py --json gpu_check.json                  # on a CUDA machine
    python bench/gpu_check.py --device cpu --model tiny --updates 50 # CPU smoke test of the script

    python bench/gpu_check.py --device cpu --expect-out expect.json   # on any machine: the CPU digests
    python bench/gpu_check.py --expect expect.json --json gpu_check.json  # ... then compared on the GPU

Steps: (1) run the `cuda`-marked tests of tests/model; (2) build the SmolLM2-135M-shaped model
(or a tiny one) twice from the same init, one Replica on the CPU (numba) and one on --device
(Triton on CUDA); (3) apply the same N updates to both, in different orders and batchings;
(4) compare digests and every weight bit for bit after snapping and at the end. With
--expect, the digests must also equal those another machine's CPU computed (another torch,
numba and processor): the weights are initialised from onebyte's own counter-based
generator, not torch's, so every machine starts from the same bits. Writes one JSON object
(also printed). Exit status 0 only when everything agrees.
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from onebyte.model import Hyper, Replica, Seeder
from onebyte.model.grid import uniforms
from onebyte.model.rng import COEF_DOMAIN

ROOT = Path(__file__).resolve().parents[1]


def build(kind, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    if kind == "smollm2-shaped":
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    else:
        cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    portable_init_(model, seed)
    return model


@torch.no_grad()
def portable_init_(model, seed):
    """Every parameter from splitmix64 words (uniform in [-0.05, 0.05), norms near 1): the same
    bits on any machine, torch and numpy version (torch.manual_seed streams are not portable)."""
    for j, (name, p) in enumerate(sorted(model.named_parameters())):
        n = p.numel()
        z = uniforms(np.array([seed * 1_000_003 + j], dtype=np.uint64), COEF_DOMAIN, n)[0]  # float64 [n]
        v = (z.astype(np.float32) - np.float32(0.5)) * np.float32(0.1)
        if name.endswith("norm.weight"):
            v = v + np.float32(1.0)
        p.copy_(torch.from_numpy(v).view(p.shape))


def run_cuda_tests():
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(ROOT / "tests" / "model")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return {"cmd": " ".join(cmd[1:]), "returncode": p.returncode, "tail": p.stdout[-1500:]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the result object here")
    ap.add_argument("--device", default="cuda", help="device of the second replica (cuda; cpu for a smoke test)")
    ap.add_argument("--model", default="smollm2-shaped", choices=["smollm2-shaped", "tiny"])
    ap.add_argument("--updates", type=int, default=1000)
    ap.add_argument("--kind", default="rademacher", choices=["rademacher", "lowrank", "sparse"],
                    help="perturbation kind of both replicas (docs/rng.md)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the cuda-marked tests")
    ap.add_argument("--expect", help="JSON from --expect-out on another machine: its CPU digests must match")
    ap.add_argument("--expect-out", help="only build and replay on the CPU, write its digests here, and exit")
    args = ap.parse_args(argv)
    if args.expect_out:
        return write_expectation(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench/gpu_check.py: no CUDA device; use --device cpu for a smoke test")

    out = {"command": " ".join([Path(sys.executable).name] + sys.argv), "device": args.device, "model": args.model,
           "updates": args.updates, "kind": args.kind,
           "torch_version": torch.__version__, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        import triton
        out["triton_version"] = triton.__version__
    if not args.skip_tests:
        out["cuda_tests"] = run_cuda_tests()

    hyper = kind_hyper(args.kind)
    cpu = Replica(build(args.model), hyper, "cpu")
    dev = Replica(build(args.model), hyper, args.device)
    out["param_count"] = cpu.n_trainable
    out["digest_after_snap_cpu"], out["digest_after_snap_dev"] = cpu.digest(), dev.digest()

    rnd = random.Random(2024)
    ups = make_updates(rnd, args.updates, hyper)
    t = time.perf_counter()
    cpu.replay(ups)  # in order, fused batches of 128
    out["cpu_replay_s"] = time.perf_counter() - t
    shuffled = ups[:]
    rnd.shuffle(shuffled)
    t = time.perf_counter()
    i = 0
    while i < len(shuffled):  # another order and uneven batches on the device
        k = rnd.randint(1, 200)
        dev.replay(shuffled[i:i + k])
        i += k
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    out["dev_replay_s"] = time.perf_counter() - t

    out["digest_cpu"], out["digest_dev"] = cpu.digest(), dev.digest()
    same_bits = torch.equal(cpu.flat.view(torch.int32), dev.flat.cpu().view(torch.int32))
    out["bit_identical"] = bool(same_bits and out["digest_cpu"] == out["digest_dev"]
                                and out["digest_after_snap_cpu"] == out["digest_after_snap_dev"])
    tests_ok = args.skip_tests or out["cuda_tests"]["returncode"] in (0, 5)  # 5: no cuda tests collected
    if args.expect:
        exp = json.loads(Path(args.expect).read_text())
        same_setup = all(exp.get(k, "rademacher") == out[k] for k in ("model", "updates", "kind"))
        out["expected_from"] = {k: exp[k] for k in ("machine", "torch_version", "numba_version", "date_utc")}
        out["matches_other_machine"] = bool(same_setup and exp["digest_after_snap"] == out["digest_after_snap_dev"]
                                            and exp["digest"] == out["digest_dev"])
    out["ok"] = bool(out["bit_identical"] and tests_ok and out.get("matches_other_machine", True))
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if out["ok"] else 1


def kind_hyper(kind: str) -> Hyper:
    return Hyper(lr=1e-6, max_fused=128, perturbation=kind)


def make_updates(rnd, n, hyper):
    """n updates of 4 origins on consecutive steps (low-rank noise: consecutive steps share V)."""
    seeder = Seeder.for_hyper(bytes(rnd.getrandbits(8) for _ in range(32)), hyper)
    return [seeder.update(bytes([i % 4]) * 32, 1 + i // 4, rnd.randint(-127, 127)) for i in range(n)]


def write_expectation(args):
    """The CPU side alone, for --expect on another machine."""
    import numba
    import platform
    hyper = kind_hyper(args.kind)
    cpu = Replica(build(args.model), hyper, "cpu")
    out = {"model": args.model, "updates": args.updates, "kind": args.kind, "digest_after_snap": cpu.digest(),
           "machine": f"{platform.machine()} {platform.processor()}".strip(), "torch_version": torch.__version__,
           "numba_version": numba.__version__, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    cpu.replay(make_updates(random.Random(2024), args.updates, hyper))
    out["digest"] = cpu.digest()
    Path(args.expect_out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
