// Three planes' runs of 8 floats interleaved into 24 (a0 b0 c0 a1 b1 c1 ...) with AVX2: a 3-channel
// NCHW image's row made channels-last for the stem's 3x3 convolution (conv3x3_input_rows). Copied
// float by float, that row took about a sixth of MobileNetV2's stem with its first block (batch 8,
// one thread). Included by the AVX2 and AVX-512 kernels after their `#pragma GCC target`.
#pragma once
#include <immintrin.h>

namespace mnv2_fused {
namespace cpu {
namespace {

#define MNV2_ISA_INTERLEAVE3 1
inline void interleave3x8(const float* a, const float* b, const float* c, float* out) {
  // Pixel i of plane p goes to float 3i + p of the 24: one permutation per plane puts each of its
  // floats in the lane it takes in its output vector, and blends pick each lane's plane.
  const __m256 pa = _mm256_permutevar8x32_ps(_mm256_loadu_ps(a), _mm256_setr_epi32(0, 3, 6, 1, 4, 7, 2, 5));
  const __m256 pb = _mm256_permutevar8x32_ps(_mm256_loadu_ps(b), _mm256_setr_epi32(5, 0, 3, 6, 1, 4, 7, 2));
  const __m256 pc = _mm256_permutevar8x32_ps(_mm256_loadu_ps(c), _mm256_setr_epi32(2, 5, 0, 3, 6, 1, 4, 7));
  // Blend masks: bit i set takes lane i from the second operand.
  _mm256_storeu_ps(out, _mm256_blend_ps(_mm256_blend_ps(pa, pb, 0x92), pc, 0x24));       // a 0,3,6 b 1,4,7 c 2,5
  _mm256_storeu_ps(out + 8, _mm256_blend_ps(_mm256_blend_ps(pa, pb, 0x24), pc, 0x49));   // a 1,4,7 b 2,5 c 0,3,6
  _mm256_storeu_ps(out + 16, _mm256_blend_ps(_mm256_blend_ps(pa, pb, 0x49), pc, 0x92));  // a 2,5 b 0,3,6 c 1,4,7
}

}  // namespace
}  // namespace cpu
}  // namespace mnv2_fused
