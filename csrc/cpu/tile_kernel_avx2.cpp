// The CPU kernel for AVX2 + FMA CPUs: 8-lane vectors, 16 registers (12 accumulators).
#include "tile_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,bmi2")
#include <immintrin.h>

#include "interleave3_avx2.h"

namespace mnv2_fused {
namespace cpu {
namespace {
constexpr int kLanes = 8;
constexpr int kMaxAcc = 12;
typedef float vec __attribute__((vector_size(32)));
inline vec splat(float s) { return reinterpret_cast<vec>(_mm256_set1_ps(s)); }
// max/min return their second operand when either is NaN: with v second, NaN passes through.
inline vec relu6(vec v) {
  const __m256 r = _mm256_max_ps(_mm256_setzero_ps(), reinterpret_cast<__m256>(v));
  return reinterpret_cast<vec>(_mm256_min_ps(_mm256_set1_ps(6.f), r));
}
// A GEMM micro-tile's store makes the activations' constants where it uses them: the zero by a
// zeroing idiom the CPU renames away, the 6 broadcast from memory, both in volatile asm, which GCC
// does not hoist. As constants, GCC hoisted them out of the loop over row tiles and kept one in a
// register through every k-loop, so that a 3 x 4 tile kept only two of B's four vectors in
// registers and read the other two in every FMA (now three, and one read); a 4 x 3 tile one of three.
// MobileNetV2's blocks 1-3 ran 1.04-1.10x faster, the forward 1.02-1.025x (batch 1, Zen 3, one and
// two threads).
#define MNV2_ISA_TILE_CONSTANTS 1
inline vec tile_zero() {
  __m256 zero;
  asm volatile("vxorps %0, %0, %0" : "=x"(zero));  // volatile: not hoisted
  return reinterpret_cast<vec>(zero);
}
inline vec tile_relu6(vec v) {
  static const float kSix = 6.f;
  __m256 six;
  asm volatile("vbroadcastss %1, %0" : "=x"(six) : "m"(kSix));
  // max and min return their second operand when either is NaN: with v second, NaN passes through.
  const __m256 r = _mm256_max_ps(reinterpret_cast<__m256>(tile_zero()), reinterpret_cast<__m256>(v));
  return reinterpret_cast<vec>(_mm256_min_ps(six, r));
}
using Mask = __m256i;
inline Mask make_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vec load_m(const float* p, Mask m) { return reinterpret_cast<vec>(_mm256_maskload_ps(p, m)); }
inline void store_m(float* p, vec v, Mask m) { _mm256_maskstore_ps(p, m, reinterpret_cast<__m256>(v)); }
}  // namespace
}  // namespace cpu
}  // namespace mnv2_fused

#define MNV2_ISA avx2
#include "tile_kernel_impl.h"
#else
#define MNV2_FORWARD_TO_GENERIC avx2
#include "tile_kernel_forward.h"
#endif
