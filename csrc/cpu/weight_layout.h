// The CPU kernel reads every weight with the output channel fastest (a vector of output channels
// per input channel or tap). Weights already in that layout -- the module caches them so -- are
// used in place, through their pointers, without creating a single tensor; others are copied into
// it once per call.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "tile_kernel.h"

namespace mnv2_fused {
namespace cpu {

// Pointer to w's values as a (K, O) row-major matrix, where w is (O, K...) with its trailing dims
// flattened in the given order; `keep` owns a copy when w is not stored that way already.
// `perm` lists w's dims from slowest to fastest in the wanted storage order (output dim last).
inline const float* out_fastest(const at::Tensor& w, at::IntArrayRef perm, at::Tensor& keep) {
  // Stored as wanted iff the dims, in perm order, have the strides of a contiguous tensor.
  int64_t expected = 1;
  bool in_place = true;
  for (int64_t i = static_cast<int64_t>(perm.size()) - 1; i >= 0; --i) {
    const int64_t d = perm[i];
    if (w.size(d) != 1 && w.stride(d) != expected) in_place = false;
    expected *= w.size(d);
  }
  if (in_place) return w.data_ptr<float>();
  keep = w.permute(perm).contiguous();
  return keep.data_ptr<float>();
}

inline const float* contiguous_ptr(const at::Tensor& t, at::Tensor& keep) {
  if (t.is_contiguous()) return t.data_ptr<float>();
  keep = t.contiguous();
  return keep.data_ptr<float>();
}

// Pointer to a (O, K) weight matrix as the CPU GEMMs read it: packed as is (3-D, see
// check_matrix_weight), else (K, O) row-major, copied into `keep` unless stored so.
inline const float* matrix_columns(const at::Tensor& w, at::Tensor& keep, bool& packed) {
  packed = w.dim() == 3;
  return packed ? w.data_ptr<float>() : out_fastest(w, {1, 0}, keep);
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

  // w_stem (hidden, Cin, 3, 3) -> (3, 3, Cin, hidden), read as (9 Cin, hidden): the order of the
  // patches (conv3x3_patch).
  void set_stem(BlockArgs& a, const at::Tensor& w_stem, const at::Tensor& b_stem, const at::Tensor& w_dw,
                const at::Tensor& b_dw, const at::Tensor& w_proj, const at::Tensor& b_proj) {
    a.w_expand = out_fastest(w_stem, {2, 3, 1, 0}, keep[0]);
    a.expand_packed = false;
    a.b_expand = contiguous_ptr(b_stem, keep[1]);
    set_dw_proj(a, w_dw, b_dw, w_proj, b_proj);
  }
};

}  // namespace cpu
}  // namespace mnv2_fused
