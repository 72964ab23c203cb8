// The CPU kernel for AVX-512 CPUs: 16-lane vectors, 32 registers (24 accumulators), mask registers
// for the channel tails.
#include "tile_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2")
#include <immintrin.h>

namespace mnv2_fused {
namespace cpu {
namespace {
constexpr int kLanes = 16;
constexpr int kMaxAcc = 24;
typedef float vec __attribute__((vector_size(64)));
inline vec splat(float s) { return reinterpret_cast<vec>(_mm512_set1_ps(s)); }
// max/min return their second operand when either is NaN: with v second, NaN passes through.
inline vec relu6(vec v) {
  const __m512 r = _mm512_max_ps(_mm512_setzero_ps(), reinterpret_cast<__m512>(v));
  return reinterpret_cast<vec>(_mm512_min_ps(_mm512_set1_ps(6.f), r));
}
using Mask = __mmask16;
inline Mask make_mask(int n) { return static_cast<Mask>((1u << n) - 1u); }
inline vec load_m(const float* p, Mask m) { return reinterpret_cast<vec>(_mm512_maskz_loadu_ps(m, p)); }
inline void store_m(float* p, vec v, Mask m) { _mm512_mask_storeu_ps(p, m, reinterpret_cast<__m512>(v)); }
}  // namespace
}  // namespace cpu
}  // namespace mnv2_fused

#define MNV2_ISA avx512
#include "tile_kernel_impl.h"
#else
#define MNV2_FORWARD_TO_GENERIC avx512
#include "tile_kernel_forward.h"
#endif
