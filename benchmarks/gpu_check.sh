#!/usr/bin/env bash
# The one script for a lent GPU machine (one H200; no registry there): preflight, build for Hopper
# on all cores, the GPU tests (CUDA and Triton, fp32 / fp16 / bf16, the families' models), the
# Table-2 blocks at batch 64 in fp16 with each block's roofline, then MobileNetV2 at batch 1 and 64.
# Everything is logged in full under $OUT (or benchmarks/results/gpu/): preflight.log, build.log,
# pytest_blocks.log, pytest_gpu.log, gpu_blocks.jsonl and benchmark.log, gpu_network.jsonl and
# network.log (a JSON row per block or network, written as it is measured). The end of the output
# is the tables.
#
#   bash benchmarks/gpu_check.sh              # 7 minutes at most after the build; give the call 540 s
#   bash benchmarks/gpu_check.sh --prebuilt   # use the extension in mnv2_fused/ if it loads with
#                                             # its CUDA kernel (built elsewhere for this torch)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MNV2_FUSED_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MNV2_FUSED_TRITON_AUTOTUNE=0  # one Triton config per shape: tests and timing stay short
started=$(date +%s)
elapsed() { echo "[$(( $(date +%s) - started )) s]"; }

echo "== preflight $(elapsed)"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  nvcc --version | tail -2
  python3 -c "import sys, torch, triton, torchvision; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'torchvision', torchvision.__version__, 'gpu', torch.cuda.get_device_name())"
} > "$out/preflight.log" 2>&1
cat "$out/preflight.log"

has_cuda_kernel() {
  python3 -c "import torch, mnv2_fused; assert torch._C._dispatch_has_kernel_for_dispatch_key('mnv2_fused::inverted_residual', 'CUDA'), 'no CUDA kernel registered'; print('CUDA kernel registered')"
}
echo "== build $(elapsed)"
: > "$out/build.log"
if [ "${1:-}" = "--prebuilt" ] && has_cuda_kernel >> "$out/build.log" 2>&1; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # not installed: every process imports it from here
  echo "the extension in mnv2_fused/ loads: not rebuilt" | tee -a "$out/build.log"
elif ! ( time pip install --no-build-isolation --no-deps -e . ) >> "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  echo "BUILD FAILED: full log in build.log"
  exit 1
else
  tail -3 "$out/build.log"
fi
has_cuda_kernel || exit 1

echo "== tests $(elapsed)"
# Two pytest runs side by side, each test's result logged as it ends (-v): the block tests (CUDA
# and Triton, every dtype; Triton compiles each shape's kernel on a core of its own, so many
# workers) and the whole-network tests (few and long: a family model's first run on Triton is
# mostly compiling). One CPU thread per worker: the float64 references are tiny, and 16 threads
# in each of 16 workers would fight over the cores.
export OMP_NUM_THREADS=1
workers() { python3 -c "import xdist" 2>/dev/null && echo "-n $1"; }
per_test_limit() { python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 220"; }
pytest_run() {  # log, workers, then pytest's arguments
  local log=$1 n=$2; shift 2
  timeout 240 python3 -m pytest -v -p no:cacheprovider -p no:benchmark -rfE $(per_test_limit) $(workers "$n") "$@" \
    > "$out/$log" 2>&1
  echo "$log: pytest exit $?"
}
pytest_run pytest_blocks.log 10 tests/test_blocks.py -k "cuda or triton" &
pytest_run pytest_gpu.log 8 tests/test_gpu.py &
wait
for log in pytest_blocks.log pytest_gpu.log; do
  grep -E "^(FAILED|ERROR)" "$out/$log" | head -20
  tail -1 "$out/$log"
done
unset OMP_NUM_THREADS

echo "== blocks $(elapsed)"
rm -f "$out/gpu_blocks.jsonl" "$out/gpu_network.jsonl"
timeout 60 python3 benchmarks/gpu_blocks.py --batch 64 --no-compile --jsonl "$out/gpu_blocks.jsonl" \
  > "$out/benchmark.log" 2>&1
echo "blocks exit $? $(elapsed)"
echo "== networks $(elapsed)"
timeout 60 python3 benchmarks/gpu_network.py --models mobilenet_v2 --jsonl "$out/gpu_network.jsonl" \
  > "$out/network.log" 2>&1
echo "networks exit $? $(elapsed)"
tail -20 "$out/benchmark.log"
tail -14 "$out/network.log"
