// The CPU kernel for any CPU, built with the compiler's baseline instruction set.
#include <cstring>

#include "tile_kernel.h"

// The 32-byte vectors stay inside this file (internal, inlined): the ABI note does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mnv2_fused {
namespace cpu {
namespace {
constexpr int kLanes = 8;
constexpr int kMaxAcc = 6;
typedef float vec __attribute__((vector_size(32)));
inline vec splat(float s) { return vec{s, s, s, s, s, s, s, s}; }
// Comparisons with NaN are false, so NaN passes through unchanged.
inline vec relu6(vec v) {
  const vec zero = splat(0.f), six = splat(6.f);
  v = v < zero ? zero : v;
  return v > six ? six : v;
}
using Mask = int;  // how many leading lanes
inline Mask make_mask(int n) { return n; }
inline vec load_m(const float* p, Mask n) {
  vec v = {};
  std::memcpy(&v, p, sizeof(float) * n);
  return v;
}
inline void store_m(float* p, vec v, Mask n) { std::memcpy(p, &v, sizeof(float) * n); }
}  // namespace
}  // namespace cpu
}  // namespace mnv2_fused

#define MNV2_ISA generic
#include "tile_kernel_impl.h"
