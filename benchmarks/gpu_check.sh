#!/usr/bin/env bash
# The one script for a GPU machine: build for Hopper on all cores, run the GPU tests (CUDA and
# Triton), then time the Table-2 blocks at batch 64 in fp16 and print a short table last.
# Output lands in $OUT (or benchmarks/results/) as gpu_check.log and gpu_blocks.json.
# Needs torch, torchvision, triton and pytest already installed (no registry is reachable there).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" MNV2_FUSED_BUILD_CUDA=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  time pip install --no-build-isolation --no-deps -e . 2>&1 | tail -3
  timeout 300 python3 -m pytest -q -p no:cacheprovider -x tests/test_blocks.py tests/test_gpu.py 2>&1 | tail -15
  timeout 240 python3 benchmarks/gpu_blocks.py --batch 64 --json "$out/gpu_blocks.json"
} 2>&1 | tee "$out/gpu_check.log"
