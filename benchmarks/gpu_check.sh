#!/usr/bin/env bash
# The one script for a lent GPU machine (one H200; no registry there): preflight, build for Hopper
# on all cores, the GPU tests (CUDA and Triton, fp32 / fp16 / bf16), then the Table-2 blocks at
# batch 64 in fp16 with each block's roofline. Everything is logged in full under $OUT (or
# benchmarks/results/gpu/): preflight.log, build.log, pytest.log, gpu_blocks.jsonl (a row per
# block, written as it is measured), benchmark.log. The end of the output is the table.
#
#   bash benchmarks/gpu_check.sh        # well under 8 minutes; give the call 540 s
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

echo "== build $(elapsed)"
if ! ( time pip install --no-build-isolation --no-deps -e . ) > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  echo "BUILD FAILED: full log in build.log"
  exit 1
fi
tail -3 "$out/build.log"
python3 -c "import torch, mnv2_fused; assert torch._C._dispatch_has_kernel_for_dispatch_key('mnv2_fused::inverted_residual', 'CUDA'), 'no CUDA kernel registered'; print('CUDA kernel registered')" || exit 1

echo "== tests $(elapsed)"
timeout 240 python3 -m pytest -q -p no:cacheprovider -rfE tests/test_blocks.py tests/test_gpu.py -k "cuda or triton or gpu" > "$out/pytest.log" 2>&1
echo "pytest exit $?"
grep -E "^(FAILED|ERROR)" "$out/pytest.log" | head -30
tail -3 "$out/pytest.log"

echo "== benchmark $(elapsed)"
rm -f "$out/gpu_blocks.jsonl"
timeout 270 python3 benchmarks/gpu_blocks.py --batch 64 --jsonl "$out/gpu_blocks.jsonl" > "$out/benchmark.log" 2>&1
echo "benchmark exit $? $(elapsed)"
tail -30 "$out/benchmark.log"
