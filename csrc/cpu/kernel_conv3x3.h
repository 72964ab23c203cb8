// A network's first 3x3 convolution on its own (EfficientNet's and MobileNetV3's stems, whose
// first block does not take it in as MobileNetV2's does), compiled once per instruction set
// (included by tile_kernel_impl.h): each output row's patches, read in place from its input rows
// (conv3x3_input_rows, conv3x3_gemm), through the GEMM, whose short-K kernel takes the 27 taps of a
// 3-channel image with 16 output channels.
#pragma once
#include "kernel_block.h"

namespace mnv2_fused {
namespace cpu {

void MNV2_CAT(conv3x3_rows_, MNV2_ISA)(const BlockArgs& a, int64_t n, int64_t r0, int64_t r1, float* scratch) {
  const int64_t K = 9 * a.cin, block = conv3x3_block_pixels(K), ld = conv3x3_rows_ld(a.hw, a.expand_stride, a.cin);
  float* rows = scratch;
  float* patches = scratch + 3 * ld + kPatchSlack;
  const float* a_rows[kRowBlock];
  float* c_rows[kRowBlock];
  Gemm g;
  g.set_weights(a.w_expand, a.expand_packed, K, 0, K, a.hidden, 0);
  g.a = a_rows;
  g.bias = a.b_expand;
  g.c = c_rows;
  g.ck = a.syc;
  g.store = Store::kAct;
  g.act = a.act;
  for (int64_t r = r0; r < r1; ++r) {
    conv3x3_input_rows(a, n, r, 0, a.hw, rows);
    for (int64_t j0 = 0; j0 < a.hw; j0 += block) {
      const int64_t m = std::min(block, a.hw - j0);
      for (int64_t i = 0; i < m; ++i) {
        a_rows[i] = rows + (j0 + i) * a.expand_stride * a.cin;
        c_rows[i] = a.y + n * a.syn + r * a.syh + (j0 + i) * a.syw;
      }
      conv3x3_gemm(a, g, a_rows, c_rows, m, a.hidden, ld, patches);
    }
  }
}

}  // namespace cpu
}  // namespace mnv2_fused
