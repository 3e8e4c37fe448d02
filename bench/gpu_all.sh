#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a short session on a CUDA machine:
#
#     bench/gpu_all.sh OUTDIR [EXPECT_DIR]
#
# EXPECT_DIR holds expect_cpu_KIND.json for each perturbation kind, from
# `python bench/gpu_check.py --device cpu --kind KIND --expect-out EXPECT_DIR/expect_cpu_KIND.json`
# on another machine (its CPU digests after the same 1,000 updates; docs/gpu/ has them).
# Writes gpu_check_KIND.json, gpu_kernels.json, replay_cuda.json and logs into OUTDIR. Uses `python3` from PATH (torch
# with CUDA, triton, numba, transformers, pytest); onebyte itself is put on the path from
# this checkout without installing anything, so it also runs where no package index is
# reachable.
set -uo pipefail
out=${1:?usage: bench/gpu_all.sh OUTDIR [EXPECT_DIR]}
expect=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1

# onebyte is a namespace package mapped from the three top-level folders (pyproject.toml)
pkg=$(mktemp -d)
mkdir -p "$pkg/onebyte"
for room in model protocol node; do ln -s "$root/$room" "$pkg/onebyte/$room"; done
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
cd "$root"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c 'import torch, triton, numba, transformers, sys; print(sys.version.split()[0], torch.__version__, "triton", triton.__version__, "numba", numba.__version__, "transformers", transformers.__version__)'
} 2>&1 | tee "$out/env.txt"

status=0
run() {  # name, command...: runs, logs, remembers a failure, goes on
  local name=$1; shift
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$out/$name.log" | tail -40
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || status=1
}

for kind in rademacher lowrank sparse; do
  exp=${expect:+$expect/expect_cpu_$kind.json}
  skip=$([ "$kind" = rademacher ] || echo --skip-tests)   # the cuda tests run once
  run gpu_check_$kind python3 bench/gpu_check.py --kind $kind $skip --json "$out/gpu_check_$kind.json" ${exp:+--expect "$exp"}
done
run gpu_kernels python3 bench/gpu_kernels.py --json "$out/gpu_kernels.json"
run replay_cuda python3 bench/replay.py --device cuda --step-batches 16x64,32x128 --json "$out/replay_cuda.json"
exit $status
