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
// exp and 1/x for SiLU with AVX-512's own rounding, 2^n scaling and reciprocal estimate: about half
// the instructions of the portable versions (kernel_act.h). e^r on |r| <= ln2 / 2 by a degree-5
// minimax polynomial (relative error 1.7e-7 evaluated in float32, where the portable degree 7 has
// 1.2e-7; both well under what a block's float32 output can tell apart).
#define MNV2_ISA_EXP 1
inline vec isa_exp(vec x) {
  __m512 v = reinterpret_cast<__m512>(x);
  v = _mm512_min_ps(_mm512_set1_ps(88.3762626647949f), v);  // NaN, the second operand, goes through
  v = _mm512_max_ps(_mm512_set1_ps(-88.3762626647949f), v);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(8.290315046906471e-3f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.189793020486832e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.666763573884964e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.999915063381195e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(9.999997019767761e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f));
  return reinterpret_cast<vec>(_mm512_scalef_ps(y, n));
}
// 1/d: a 14-bit estimate and one Newton step (23 bits).
inline vec isa_recip(vec d) {
  const __m512 dv = reinterpret_cast<__m512>(d);
  const __m512 r = _mm512_rcp14_ps(dv);
  return reinterpret_cast<vec>(_mm512_mul_ps(r, _mm512_fnmadd_ps(dv, r, _mm512_set1_ps(2.f))));
}
}  // namespace
}  // namespace cpu
}  // namespace mnv2_fused

#define MNV2_ISA avx512
#include "tile_kernel_impl.h"
#else
#define MNV2_FORWARD_TO_GENERIC avx512
#include "tile_kernel_forward.h"
#endif
