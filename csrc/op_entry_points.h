// The two entry points of the op (functional and out=), shared by every device: check the
// arguments, allocate or check the output, then hand over to the device's `run`.
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include "checks.h"

namespace mnv2_fused {

// Writes the block's output into y; y has the output's shape and does not overlap x. Weights come
// with the caller's strides: each device lays them out as its kernel needs.
using RunBlockFn = void (*)(const at::Tensor& x, const BlockShape& s, const std::optional<at::Tensor>& w_expand,
                            const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                            const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y);

// For kernels that index weights as contiguous arrays: makes them so (a no-op for the module's
// cached weights on that device).
template <RunBlockFn run>
void run_contiguous(const at::Tensor& x, const BlockShape& s, const std::optional<at::Tensor>& w_expand,
                    const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                    const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y) {
  std::optional<at::Tensor> we, be;
  if (s.expand) {
    we = w_expand->contiguous();
    be = b_expand->contiguous();
  }
  run(x, s, we, be, w_dw.contiguous(), b_dw.contiguous(), w_proj.contiguous(), b_proj.contiguous(), y);
}

template <RunBlockFn run>
at::Tensor inverted_residual_functional(const at::Tensor& x, const std::optional<at::Tensor>& w_expand,
                                        const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                        const at::Tensor& b_dw, const at::Tensor& w_proj, const at::Tensor& b_proj,
                                        int64_t stride, bool residual) {
  const BlockShape s = check_block(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, stride, residual);
  at::Tensor y = empty_output(x, s);
  run(x, s, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, y);
  return y;
}

template <RunBlockFn run>
void inverted_residual_out(const at::Tensor& x, const std::optional<at::Tensor>& w_expand,
                           const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                           const at::Tensor& w_proj, const at::Tensor& b_proj, int64_t stride, bool residual,
                           at::Tensor out) {
  const BlockShape s = check_block(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, stride, residual);
  check_out(out, x, s);
  // Tiles read x while others write out: the two must not share memory.
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, x);
  run(x, s, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, out);
}

}  // namespace mnv2_fused
