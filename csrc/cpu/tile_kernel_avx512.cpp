// run_tile for AVX-512 CPUs: 32 vector registers hold an 8 x 32 accumulator tile.
#include "tile_kernel.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2")
#define MNV2_TILE_FN run_tile_avx512
#define MNV2_MR 8
#include "tile_kernel_impl.h"
#else
namespace mnv2_fused { namespace cpu {
void run_tile_avx512(const BlockArgs& a, const TilePlan& p, int64_t n, int64_t r0, float* s) {
  run_tile_generic(a, p, n, r0, s);
}
}}  // namespace mnv2_fused::cpu
#endif
