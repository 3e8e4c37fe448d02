"""CUDA acceptance check: CUDA tests pass, and CUDA and CPU replicas agree bit for bit.

    python bench/gpu_check.py --json gpu_check.json                  # on a CUDA machine
    python bench/gpu_check.py --device cpu --model tiny --updates 50 # CPU smoke test of the script

Steps: (1) run the `cuda`-marked tests of tests/model; (2) build the SmolLM2-135M-shaped model
(or a tiny one) twice from the same init, one Replica on the CPU (numba) and one on --device
(Triton on CUDA); (3) apply the same N updates to both, in different orders and batchings;
(4) compare digests and every weight bit for bit after snapping and at the end. Writes one
JSON object (also printed). Exit status 0 only when everything agrees.
"""
import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

from onebyte.model import Hyper, Replica

ROOT = Path(__file__).resolve().parents[1]


def build(kind, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    if kind == "smollm2-shaped":
        cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    else:
        cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(seed)  # model init only; identical on both sides because it is built on the CPU
    return LlamaForCausalLM(cfg).eval()


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
    ap.add_argument("--skip-tests", action="store_true", help="do not run the cuda-marked tests")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench/gpu_check.py: no CUDA device; use --device cpu for a smoke test")

    out = {"device": args.device, "model": args.model, "updates": args.updates,
           "torch_version": torch.__version__, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        import triton
        out["triton_version"] = triton.__version__
    if not args.skip_tests:
        out["cuda_tests"] = run_cuda_tests()

    hyper = Hyper(lr=1e-6, max_fused=128)
    cpu = Replica(build(args.model), hyper, "cpu")
    dev = Replica(build(args.model), hyper, args.device)
    out["param_count"] = cpu.n_trainable
    out["digest_after_snap_cpu"], out["digest_after_snap_dev"] = cpu.digest(), dev.digest()

    rnd = random.Random(2024)
    ups = [(rnd.getrandbits(64), rnd.randint(-127, 127), rnd.randint(1, 10_000)) for _ in range(args.updates)]
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
    out["ok"] = bool(out["bit_identical"] and tests_ok)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
