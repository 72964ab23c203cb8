// The CPU kernel reads every weight with the output channel fastest (a vector of output channels
// per input channel or tap). Weights already in that layout -- the module caches them so -- are
// used in place, through their pointers, without creating a single tensor; others are copied into
// it once per call (a matrix in nn.Linear's (O, K) layout: packed, see matrix_columns). 3x3
// convolutions' weights (a stem's) are packed on every call (packed_3x3).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>

#include "tile_kernel.h"

namespace mnv2_fused {
namespace cpu {

// Whether w's dims, in perm order, have the strides of a contiguous tensor.
inline bool stored_as(const at::Tensor& w, at::IntArrayRef perm) {
  int64_t expected = 1;
  for (int64_t i = static_cast<int64_t>(perm.size()) - 1; i >= 0; --i) {
    const int64_t d = perm[i];
    if (w.size(d) != 1 && w.stride(d) != expected) return false;
    expected *= w.size(d);
  }
  return true;
}

// Pointer to w's values as a (K, O) row-major matrix, where w is (O, K...) with its trailing dims
// flattened in the given order; `keep` owns a copy when w is not stored that way already.
// `perm` lists w's dims from slowest to fastest in the wanted storage order (output dim last).
inline const float* out_fastest(const at::Tensor& w, at::IntArrayRef perm, at::Tensor& keep) {
  if (stored_as(w, perm)) return w.data_ptr<float>();
  keep = w.permute(perm).contiguous();
  return keep.data_ptr<float>();
}

inline const float* contiguous_ptr(const at::Tensor& t, at::Tensor& keep) {
  if (t.is_contiguous()) return t.data_ptr<float>();
  keep = t.contiguous();
  return keep.data_ptr<float>();
}

// w (O, K), any strides, packed into `keep` as mnv2_fused.layout.pack_columns packs it:
// (ceil(O / 16), K, 16), output channel 16 g + c of row k at [g][k][c], zeros past O.
inline const float* pack_matrix(const at::Tensor& w, at::Tensor& keep) {
  const int64_t o = w.size(0), k = w.size(1), s0 = w.stride(0), s1 = w.stride(1);
  keep = at::empty({ceil_div(o, kPackedColumns), k, kPackedColumns}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = keep.data_ptr<float>();
  // Group by group, 16 rows of w read side by side and their block written in order.
  at::parallel_for(0, keep.size(0), 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t rows = std::min<int64_t>(kPackedColumns, o - g * kPackedColumns);
      const float* rows_src = src + g * kPackedColumns * s0;
      float* block = dst + g * k * kPackedColumns;
      for (int64_t kk = 0; kk < k; ++kk) {
        float* out = block + kk * kPackedColumns;
        int64_t c = 0;
        for (; c < rows; ++c) out[c] = rows_src[c * s0 + kk * s1];
        for (; c < kPackedColumns; ++c) out[c] = 0.f;
      }
    }
  });
  return dst;
}

// Pointer to a (O, K) weight matrix as the CPU GEMMs read it: packed (3-D, see
// check_matrix_weight) or (K, O) row-major, in place; any other (O, K), nn.Linear's own layout
// included, is packed into `keep` on every call. Transposed into (K, O) instead, it took far
// longer than packing and the packed GEMM together (mnv2_fused.linear on two Zen 3 cores:
// MobileNetV2's classifier at batch 1, 1000 x 1280, 1.43 ms against 0.38 ms; its first expand's
// 12544 rows, 96 x 16, 1.46 against 0.33 ms).
inline const float* matrix_columns(const at::Tensor& w, at::Tensor& keep, bool& packed) {
  if (w.dim() == 3) {
    packed = true;
    return w.data_ptr<float>();
  }
  packed = !stored_as(w, {1, 0});
  return packed ? pack_matrix(w, keep) : w.data_ptr<float>();
}

// w (O, Cin, 3, 3) as the GEMM's packed B (see kPackedColumns): rows in the patches' [dy][dx][c]
// order (conv3x3_patch), output channels in zero-padded groups. Packed, the 3x3 convolution runs
// on the micro-tiles, which need packed B: on a 3-channel stem's 27 x 32 GEMM 1.3x faster than
// one output vector at a time. Small (27 x 32 floats), so packed per call.
inline const float* packed_3x3(const at::Tensor& w, at::Tensor& keep) {
  const int64_t o = w.size(0), cin = w.size(1), k = 9 * cin;
  keep = at::zeros({ceil_div(o, kPackedColumns) * k * kPackedColumns}, w.options());
  float* dst = keep.data_ptr<float>();
  const auto src = w.accessor<float, 4>();
  for (int64_t j = 0; j < o; ++j)
    for (int64_t c = 0; c < cin; ++c)
      for (int64_t dy = 0; dy < 3; ++dy)
        for (int64_t dx = 0; dx < 3; ++dx)
          dst[(j / kPackedColumns * k + (dy * 3 + dx) * cin + c) * kPackedColumns + j % kPackedColumns] =
              src[j][c][dy][dx];
  return dst;
}

// Holds whatever copies the call needed while the kernel runs.
struct KernelWeights {
  at::Tensor keep[6];

  // w_dw (hidden, 3, 3) -> (9, hidden); w_proj (Cout, hidden) -> (hidden, Cout) or packed.
  void set_dw_proj(BlockArgs& a, const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_proj,
                   const at::Tensor& b_proj) {
    a.w_dw = out_fastest(w_dw, {1, 2, 0}, keep[2]);
    a.b_dw = contiguous_ptr(b_dw, keep[3]);
    a.w_proj = matrix_columns(w_proj, keep[4], a.proj_packed);
    a.b_proj = contiguous_ptr(b_proj, keep[5]);
  }

  // w_expand (hidden, Cin) -> (Cin, hidden) or packed.
  void set_block(BlockArgs& a, const std::optional<at::Tensor>& w_expand, const std::optional<at::Tensor>& b_expand,
                 const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_proj, const at::Tensor& b_proj) {
    a.expand_packed = false;
    a.w_expand = w_expand ? matrix_columns(*w_expand, keep[0], a.expand_packed) : nullptr;
    a.b_expand = b_expand ? contiguous_ptr(*b_expand, keep[1]) : nullptr;
    set_dw_proj(a, w_dw, b_dw, w_proj, b_proj);
  }

  // w_stem (hidden, Cin, 3, 3) -> packed (9 Cin, hidden) (packed_3x3).
  void set_stem(BlockArgs& a, const at::Tensor& w_stem, const at::Tensor& b_stem, const at::Tensor& w_dw,
                const at::Tensor& b_dw, const at::Tensor& w_proj, const at::Tensor& b_proj) {
    a.w_expand = packed_3x3(w_stem, keep[0]);
    a.expand_packed = true;
    a.b_expand = contiguous_ptr(b_stem, keep[1]);
    set_dw_proj(a, w_dw, b_dw, w_proj, b_proj);
  }
};

}  // namespace cpu
}  // namespace mnv2_fused
