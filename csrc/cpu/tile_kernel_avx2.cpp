// run_tile for AVX2 + FMA CPUs: 16 vector registers hold a 3 x 32 accumulator tile.
#include "tile_kernel.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,bmi2")
#define MNV2_TILE_FN run_tile_avx2
#define MNV2_MR 3
#include "tile_kernel_impl.h"
#else
namespace mnv2_fused { namespace cpu {
void run_tile_avx2(const BlockArgs& a, const TilePlan& p, int64_t n, int64_t r0, float* s) {
  run_tile_generic(a, p, n, r0, s);
}
}}  // namespace mnv2_fused::cpu
#endif
