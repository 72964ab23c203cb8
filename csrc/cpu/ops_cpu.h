// The CPU kernels of the ops, callable from C++ without the dispatcher (the whole-network op
// chains them).
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "../checks.h"
#include "tile_kernel.h"
#include "weight_layout.h"

namespace mnv2_fused {
namespace cpu {

at::Tensor inverted_residual(const at::Tensor& x, const std::optional<at::Tensor>& w_expand,
                             const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                             const at::Tensor& w_proj, const at::Tensor& b_proj, int64_t stride, bool residual);
at::Tensor stem_inverted_residual(const at::Tensor& x, const at::Tensor& w_stem, const at::Tensor& b_stem,
                                  int64_t stem_stride, const at::Tensor& w_dw, const at::Tensor& b_dw,
                                  const at::Tensor& w_proj, const at::Tensor& b_proj, int64_t stride);
// The two above on arguments already checked (check_block's or check_stem's shape), into y: the
// output's shape, any strides, not overlapping x. For callers that place the outputs themselves
// (a network's forward in its arena, forward_arena.h).
void run_inverted_residual(const at::Tensor& x, const BlockShape& s, const std::optional<at::Tensor>& w_expand,
                           const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                           const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y);
void run_stem_inverted_residual(const at::Tensor& x, const StemShape& st, const at::Tensor& w_stem,
                                const at::Tensor& b_stem, const at::Tensor& w_dw, const at::Tensor& b_dw,
                                const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y);
// A block's kernel call (or the stem's with its first block) made ready for one input shape and its
// weights: the weights in the kernel's layout (copies, where they needed any, held here), the
// shape, and the tile plan for as many threads as there were. A network's bound forward keeps its
// stages' (network.cpp): made anew in every forward, they read each weight tensor's metadata,
// which the stages before had pushed out of the caches, and looked the plan up.
struct PreparedBlock {
  BlockArgs args{};  // all but the input's and output's pointers and strides (set per call)
  KernelWeights weights;
  TilePlan plan;
  int64_t batch = 0, threads = 0, budget = 0;
};
// before: the prepared call that makes this one's input, when the caller knows it (its split of
// the image among the threads weighs in the plan: choose_plan's rows_before). allowed_floats: as
// for the stem below.
PreparedBlock prepare_inverted_residual(const BlockShape& s, const std::optional<at::Tensor>& w_expand,
                                        const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                        const at::Tensor& b_dw, const at::Tensor& w_proj, const at::Tensor& b_proj,
                                        const PreparedBlock* before = nullptr, int64_t allowed_floats = 0);
// allowed_floats: scratch per worker the caller can spare beyond the budget's own rule (a network
// forward whose later stages hold more memory than the stem's output and scratch).
PreparedBlock prepare_stem_inverted_residual(const StemShape& st, const at::Tensor& w_stem, const at::Tensor& b_stem,
                                             const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_proj,
                                             const at::Tensor& b_proj, int64_t allowed_floats = 0);
// The prepared call on x (float32, its shape as prepared, any strides) into y (the output's shape,
// any strides, not overlapping x).
void run_prepared(const PreparedBlock& p, const at::Tensor& x, at::Tensor& y);

at::Tensor pointwise_relu6_mean(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::string_view activation);
// The two above on arguments already checked (check_pointwise_pool's, check_linear's), into y (N
// rows of b's size, contiguous): for a network's forward, which places its outputs itself. The head's brings
// `next` (when not null: the weight the caller reads next, a classifier's) from memory into the
// cache as it computes.
void pointwise_relu6_mean_into(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor* next,
                               at::Tensor& y);
void linear_into(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, Act act, at::Tensor& y);
at::Tensor pointwise(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::string_view activation);
at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                   c10::string_view activation);

// A clear error naming `op` unless x is float32 (the CPU kernels' only dtype).
void check_cpu_float(const at::Tensor& x, const char* op);

// x's and y's pointers and strides into a.
void set_io(BlockArgs& a, const at::Tensor& x, at::Tensor& y);

// An activation's name as the ops take it (relu, relu6, silu, hardswish, sigmoid, hardsigmoid, and
// none where allowed); a clear error naming `op` and `what` otherwise.
Act parse_act(c10::string_view name, const char* op, const char* what, bool none_allowed = false);

// LinearArgs' rows [0, rows), in parallel over blocks of output columns.
void run_linear(const LinearArgs& a, int64_t rows);

}  // namespace cpu
}  // namespace mnv2_fused
