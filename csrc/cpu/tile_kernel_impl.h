// The body of the CPU kernel, compiled once per instruction set. The including file, after any
// `#pragma GCC target`, defines
//   MNV2_ISA           the suffix of the exported functions (run_tiles_<isa>, ...)
//   vec, kLanes        a GCC vector of kLanes floats
//   kMaxAcc            how many vec accumulators the register file holds next to the B row
//   Mask, make_mask(n), load_m(p, mask), store_m(p, v, mask)   the first n lanes only
//   splat(s)           every lane s
//   relu6(v)           min(max(v, 0), 6), NaN kept
// and may define, with MNV2_ISA_TILE_CONSTANTS, tile_zero() and tile_relu6(v): 0 and relu6 as a
// GEMM micro-tile's store makes them (kernel_act.h falls back on splat(0.f) and relu6),
// and includes nothing after this file.
//
// The parts, one role each: kernel_gemm.h (GEMM micro-kernels), kernel_block.h (the block
// pipeline and its tile loop), kernel_head.h (head with pool, classifier), kernel_conv3x3.h (a
// stem's 3x3 convolution on its own).
#define MNV2_CAT2(a, b) a##b
#define MNV2_CAT(a, b) MNV2_CAT2(a, b)

#include "kernel_block.h"
#include "kernel_conv3x3.h"
#include "kernel_gemm.h"
#include "kernel_head.h"

namespace mnv2_fused {
namespace cpu {

int64_t MNV2_CAT(lanes_, MNV2_ISA)() { return kLanes; }
int64_t MNV2_CAT(max_acc_, MNV2_ISA)() { return kMaxAcc; }

}  // namespace cpu
}  // namespace mnv2_fused
