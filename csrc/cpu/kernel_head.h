// The network's head (1x1 convolution + ReLU6 + global average pool) and classifier on the CPU,
// compiled once per instruction set (included by tile_kernel_impl.h).
#pragma once
#include "kernel_gemm.h"

namespace mnv2_fused {
namespace cpu {

void MNV2_CAT(pointwise_pool_, MNV2_ISA)(const PoolArgs& a, int64_t n0, int64_t n1, int64_t j0, int64_t j1) {
  const float* a_rows[kRowBlock];
  const int64_t pixels = a.h * a.wd;
  for (int64_t n = n0; n < n1; ++n) {
    float* y = a.y + n * a.cout;
    std::fill(y + j0, y + j1, 0.f);
    for (int64_t i0 = 0; i0 < pixels; i0 += kRowBlock) {
      const int64_t m = std::min(kRowBlock, pixels - i0);
      for (int64_t i = 0; i < m; ++i)
        a_rows[i] = a.x + n * a.sxn + (i0 + i) / a.wd * a.sxh + (i0 + i) % a.wd * a.sxw;
      Gemm g;
      g.set_weights(a.w, a.w_packed, a.cin, 0, a.cin, a.cout, j0);
      g.a = a_rows;
      g.ak = a.sxc;
      g.bias = a.b + j0;
      g.store = Store::kPool;
      g.pool = y + j0;
      for (int r = 0; r < kWarmRegions; ++r) g.warm[r] = a.warm[r], g.warm_bytes[r] = a.warm_bytes[r];
      gemm(g, m, j1 - j0);
    }
    const float scale = 1.f / static_cast<float>(pixels);
    for (int64_t j = j0; j < j1; ++j) y[j] *= scale;
  }
}

void MNV2_CAT(linear_, MNV2_ISA)(const LinearArgs& a, int64_t n0, int64_t n1, int64_t j0, int64_t j1) {
  const float* a_rows[kRowBlock];
  float* c_rows[kRowBlock];
  for (int64_t i0 = n0; i0 < n1; i0 += kRowBlock) {
    const int64_t m = std::min(kRowBlock, n1 - i0);
    for (int64_t i = 0; i < m; ++i) {
      a_rows[i] = a.x + (i0 + i) * a.sxn;
      c_rows[i] = a.y + (i0 + i) * a.o + j0;
    }
    Gemm g;
    g.set_weights(a.w, a.w_packed, a.k, 0, a.k, a.o, j0);
    g.a = a_rows;
    g.ak = a.sxk;
    g.bias = a.b + j0;
    g.c = c_rows;
    g.store = a.act == Act::kNone ? Store::kPlain : Store::kAct;
    g.act = a.act;
    gemm(g, m, j1 - j0);
  }
}

}  // namespace cpu
}  // namespace mnv2_fused
