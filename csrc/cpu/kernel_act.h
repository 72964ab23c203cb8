// Vector activations of the CPU kernel, compiled once per instruction set (included by
// kernel_gemm.h) from the instruction set's primitives. Each keeps NaN as NaN, as PyTorch's do.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace mnv2_fused {
namespace cpu {
namespace {

typedef int32_t ivec __attribute__((vector_size(sizeof(vec))));

// exp(x) with about 2 ulp relative error (Cephes' expf): x = n ln2 + r, |r| <= ln2 / 2, e^r by a
// degree-6 polynomial, 2^n built in the exponent bits. x is clamped to the finite range first. An
// instruction set may bring a faster e^-x of its own (MNV2_ISA_EXP: isa_exp_neg).
inline vec portable_exp(vec x) {
  const vec hi = splat(88.3762626647949f), lo = splat(-88.3762626647949f);
  x = x > hi ? hi : x;  // comparisons with NaN are false: NaN goes through
  x = x < lo ? lo : x;
  const vec fx = x * splat(1.44269504088896341f) + splat(0.5f);
  vec n = __builtin_convertvector(__builtin_convertvector(fx, ivec), vec);
  n = n > fx ? n - splat(1.f) : n;  // floor
  x = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  vec y = splat(1.9875691500e-4f);
  y = y * x + splat(1.3981999507e-3f);
  y = y * x + splat(8.3334519073e-3f);
  y = y * x + splat(4.1665795894e-2f);
  y = y * x + splat(1.6666665459e-1f);
  y = y * x + splat(5.0000001201e-1f);
  y = y * x * x + x + splat(1.f);
  const ivec bits = (__builtin_convertvector(n, ivec) + 127) << 23;
  vec scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

#ifdef MNV2_ISA_EXP
inline vec exp_neg(vec x) { return isa_exp_neg(x); }
#else
inline vec exp_neg(vec x) { return portable_exp(-x); }
#endif
inline vec sigmoid(vec v) { return splat(1.f) / (splat(1.f) + exp_neg(v)); }
// One division, not a reciprocal and a product.
inline vec silu(vec v) { return v / (splat(1.f) + exp_neg(v)); }

#ifndef MNV2_ISA_TILE_CONSTANTS
inline vec tile_zero() { return splat(0.f); }
inline vec tile_relu6(vec v) { return relu6(v); }
#endif

// ReLU6 first: MobileNetV2's, tested on every store of its GEMMs, one compare before the rest.
// `zero` makes the zero, `clamp` is relu6, through which the hard activations clamp as well.
template <class Zero, class Relu6>
inline vec activate_with(vec v, Act act, Zero zero, Relu6 clamp) {
  if (act == Act::kReLU6) return clamp(v);
  if (act == Act::kNone) return v;
  switch (act) {
    case Act::kReLU: {
      const vec z = zero();
      return v < z ? z : v;
    }
    case Act::kSiLU: return silu(v);
    case Act::kHardswish: return v * clamp(v + splat(3.f)) * splat(1.f / 6.f);
    case Act::kSigmoid: return sigmoid(v);
    case Act::kHardsigmoid: return clamp(v + splat(3.f)) * splat(1.f / 6.f);
    default: return v;
  }
}

inline vec activate(vec v, Act act) {
  return activate_with(v, act, [] { return splat(0.f); }, [](vec x) { return relu6(x); });
}
// In a GEMM micro-tile's store (tile_zero, tile_relu6).
inline vec tile_activate(vec v, Act act) {
  return activate_with(v, act, [] { return tile_zero(); }, [](vec x) { return tile_relu6(x); });
}

// f(std::integral_constant<Act, act>{}): kernels that take the activation as a compile-time
// constant, so that their loops hold its instructions alone rather than a switch per vector.
template <class F>
inline void with_act(Act act, F&& f) {
  switch (act) {
    case Act::kNone: return f(std::integral_constant<Act, Act::kNone>{});
    case Act::kReLU: return f(std::integral_constant<Act, Act::kReLU>{});
    case Act::kReLU6: return f(std::integral_constant<Act, Act::kReLU6>{});
    case Act::kSiLU: return f(std::integral_constant<Act, Act::kSiLU>{});
    case Act::kHardswish: return f(std::integral_constant<Act, Act::kHardswish>{});
    case Act::kSigmoid: return f(std::integral_constant<Act, Act::kSigmoid>{});
    case Act::kHardsigmoid: return f(std::integral_constant<Act, Act::kHardsigmoid>{});
  }
}

}  // namespace
}  // namespace cpu
}  // namespace mnv2_fused
