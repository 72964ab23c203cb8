// Which compiled copy of the CPU kernel runs: the widest instruction set this CPU has, or the one
// named by the environment variable MNV2_FUSED_CPU_ISA (avx512, avx2, generic), read once.
#pragma once
#include "tile_kernel.h"

namespace mnv2_fused {
namespace cpu {

struct Isa {
  const char* name;
  TilesFn run_tiles;
  ExpandDepthwiseFn expand_depthwise;
  ProjectKeptFn project_kept;
  PoolFn pointwise_pool;
  LinearFn linear;
  Conv3x3RowsFn conv3x3_rows;
  int64_t lanes;    // floats per vector
  int64_t max_acc;  // vector accumulators of the GEMM micro-tile
};

const Isa& cpu_isa();

}  // namespace cpu
}  // namespace mnv2_fused
