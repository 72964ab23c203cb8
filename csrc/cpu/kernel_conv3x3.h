// A network's first 3x3 convolution on its own (EfficientNet's and MobileNetV3's stems, whose
// first block does not take it in as MobileNetV2's does), compiled once per instruction set
// (included by tile_kernel_impl.h). Per output row: the three input rows it reads, padded and
// channels-last, in a row buffer; from it each pixel's patch, three runs of 3 Cin neighbouring
// floats ([dy][dx][c], so K = 27 for an image); the patches through the GEMM, whose short-K kernel
// takes K = 27. (Patches built tap by tap from an NCHW image took longer than the GEMM itself.)
#pragma once
#include "kernel_gemm.h"

namespace mnv2_fused {
namespace cpu {
namespace {

// Input rows r * stride - 1 + dy (dy = 0, 1, 2) of image n into buf: row dy at buf + dy * ld,
// column iw at (iw + 1) * cin, zero outside the image (padding 1).
void conv3x3_input_rows(const BlockArgs& a, int64_t n, int64_t r, float* buf, int64_t ld) {
  for (int64_t dy = 0; dy < 3; ++dy) {
    float* row = buf + dy * ld;
    const int64_t ih = r * a.expand_stride - 1 + dy;
    if (ih < 0 || ih >= a.h) {
      std::fill_n(row, ld, 0.f);
      continue;
    }
    std::fill_n(row, a.cin, 0.f);
    std::fill_n(row + (a.w + 1) * a.cin, ld - (a.w + 1) * a.cin, 0.f);
    const float* src = a.x + n * a.sxn + ih * a.sxh;
    if (a.sxc == 1 && a.sxw == a.cin) {  // channels_last: the row as it is
      std::memcpy(row + a.cin, src, sizeof(float) * a.w * a.cin);
      continue;
    }
    for (int64_t c = 0; c < a.cin; ++c)
      for (int64_t iw = 0; iw < a.w; ++iw) row[(iw + 1) * a.cin + c] = src[c * a.sxc + iw * a.sxw];
  }
}

// The patch of output column j: three runs of 3 Cin floats, one per input row.
inline void conv3x3_patch(const float* buf, int64_t ld, int64_t cin, int64_t stride, int64_t j, float* dst) {
  const int64_t run = 3 * cin;
  const float* src = buf + j * stride * cin;
  if (run <= kLanes) {
    const Mask mk = make_mask(static_cast<int>(run));
    for (int64_t dy = 0; dy < 3; ++dy) store_m(dst + dy * run, load_m(src + dy * ld, mk), mk);
    return;
  }
  for (int64_t dy = 0; dy < 3; ++dy) std::memcpy(dst + dy * run, src + dy * ld, sizeof(float) * run);
}

}  // namespace

void MNV2_CAT(conv3x3_rows_, MNV2_ISA)(const BlockArgs& a, int64_t n, int64_t r0, int64_t r1, float* scratch) {
  const int64_t K = 9 * a.cin, block = conv3x3_block_pixels(K), ld = conv3x3_row_floats(a.w, a.cin);
  float* rows = scratch;
  float* patches = scratch + 3 * ld;
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
    conv3x3_input_rows(a, n, r, rows, ld);
    for (int64_t j0 = 0; j0 < a.hw; j0 += block) {
      const int64_t m = std::min(block, a.hw - j0);
      for (int64_t i = 0; i < m; ++i) {
        conv3x3_patch(rows, ld, a.cin, a.expand_stride, j0 + i, patches + i * K);
        a_rows[i] = patches + i * K;
        c_rows[i] = a.y + n * a.syn + r * a.syh + (j0 + i) * a.syw;
      }
      gemm(g, m, a.hidden);
    }
  }
}

}  // namespace cpu
}  // namespace mnv2_fused
