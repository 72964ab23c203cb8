// The CPU kernel for AVX-512 CPUs: 16-lane vectors, 32 registers (24 accumulators), mask registers
// for the channel tails.
#include "tile_kernel.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2")
#include <immintrin.h>

#include "interleave3_avx2.h"

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
// Masked loads and stores cost what plain ones do (mask registers): micro-tiles store a whole last
// vector masked, one code path for every width.
#define MNV2_ISA_CHEAP_MASKS 1
// Half vectors (8 lanes) for a micro-tile's last columns when they end within a vector's first
// half: where a 512-bit FMA issues as two 256-bit halves (Zen 4), a 256-bit one costs half of it.
#define MNV2_ISA_HALF 1
typedef float hvec __attribute__((vector_size(32)));
using HMask = __mmask8;
inline HMask make_hmask(int n) { return static_cast<HMask>((1u << n) - 1u); }
inline hvec low_half(vec v) { return reinterpret_cast<hvec>(_mm512_castps512_ps256(reinterpret_cast<__m512>(v))); }
inline hvec hload(const float* p) { return reinterpret_cast<hvec>(_mm256_loadu_ps(p)); }
inline hvec hload_m(const float* p, HMask m) { return reinterpret_cast<hvec>(_mm256_maskz_loadu_ps(m, p)); }
inline void hstore_m(float* p, hvec v, HMask m) { _mm256_mask_storeu_ps(p, m, reinterpret_cast<__m256>(v)); }
inline hvec hrelu6(hvec v) {
  const __m256 r = _mm256_max_ps(_mm256_setzero_ps(), reinterpret_cast<__m256>(v));
  return reinterpret_cast<hvec>(_mm256_min_ps(_mm256_set1_ps(6.f), r));
}
inline Mask make_mask(int n) { return static_cast<Mask>((1u << n) - 1u); }
inline vec load_m(const float* p, Mask m) { return reinterpret_cast<vec>(_mm512_maskz_loadu_ps(m, p)); }
inline void store_m(float* p, vec v, Mask m) { _mm512_mask_storeu_ps(p, m, reinterpret_cast<__m512>(v)); }
// e^-x for SiLU and the sigmoid gate with AVX-512's own reductions: -x log2(e) = n + f, |f| <= 1/2,
// split by one rounding and one vreduceps (not the two-constant ln2 of the portable version), 2^f by
// a degree-5 minimax polynomial, scaled by 2^n with vscalefps, which saturates to 0 and infinity on
// its own: 12 instructions where the portable version takes 17, with the division, measured 1.8 ns
// against 2.5 ns per vector here. Rounding -x log2(e) to float costs accuracy only where e^-x is
// large, i.e. where SiLU's output is tiny: relative error 6e-7 on |x| < 8 (exact-rounded float32
// is 6e-8), 2e-6 at x = -30 where SiLU is 3e-12.
#define MNV2_ISA_EXP 1
inline vec isa_exp_neg(vec x) {
  __m512 t = _mm512_mul_ps(reinterpret_cast<__m512>(x), _mm512_set1_ps(-1.44269504088896341f));
  t = _mm512_min_ps(_mm512_set1_ps(126.f), t);  // e^88 stays finite; NaN, the second operand, goes through
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // The degree-5 minimax polynomial of e^r on |r| <= ln2/2, its coefficients rescaled for f = r / ln2.
  __m512 y = _mm512_set1_ps(1.3264728e-3f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.6715128e-3f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.5507336e-2f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4022243e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9314697e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.f));
  return reinterpret_cast<vec>(_mm512_scalef_ps(y, n));
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
