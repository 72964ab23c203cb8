// Argument checks shared by every device's kernel: one place says what the op accepts.
#pragma once
#include <ATen/ATen.h>

#include "layout.h"

namespace mnv2_fused {

struct BlockShape {
  int64_t n, cin, h, w;      // input
  int64_t hidden, cout;      // hidden width (cin * t), output channels
  int64_t oh, ow;            // output spatial size
  int64_t stride;
  bool expand, residual;
};

inline void check_weight(const at::Tensor& t, const at::Tensor& x, const char* name,
                         at::IntArrayRef shape, const char* op = "mnv2_fused.inverted_residual") {
  TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
                   " but x has dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
}

// A (O, K) weight w with bias b (O): either (O, K) with any strides, or packed as the CPU kernels
// stream it (kPackedColumns in layout.h).
inline void check_matrix_weight(const at::Tensor& w, const at::Tensor& b, const at::Tensor& x, int64_t k,
                                const char* op, const char* w_name = "w", const char* b_name = "b") {
  TORCH_CHECK_VALUE(b.dim() == 1, op, ": ", b_name, " must be 1-D, got ", b.sizes());
  const int64_t o = b.size(0);
  if (w.dim() == 3) {
    const int64_t groups = (o + kPackedColumns - 1) / kPackedColumns;
    TORCH_CHECK_VALUE(w.sizes() == at::IntArrayRef({groups, k, kPackedColumns}), op, ": packed ", w_name,
                      " must have shape ", at::IntArrayRef({groups, k, kPackedColumns}), ", got ", w.sizes());
    check_weight(w, x, w_name, w.sizes(), op);
    TORCH_CHECK_VALUE(w.is_contiguous(), op, ": a packed ", w_name, " must be contiguous");
    TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": packed weights are for the CPU kernels; x is on ", x.device());
  } else {
    TORCH_CHECK_VALUE(w.dim() == 2, op, ": ", w_name, " must be (", o, ", ", k, ") or packed (ceil(", o,
                      "/16), ", k, ", 16), got ", w.sizes());
    check_weight(w, x, w_name, {o, k}, op);
  }
  check_weight(b, x, b_name, {o}, op);
}

inline BlockShape check_block(const at::Tensor& x, const std::optional<at::Tensor>& w_expand,
                              const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                              const at::Tensor& b_dw, const at::Tensor& w_proj,
                              const at::Tensor& b_proj, int64_t stride, bool residual) {
  TORCH_CHECK_VALUE(x.dim() == 4, "mnv2_fused.inverted_residual: x must be 4-D (N, C, H, W), got ",
                    x.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()),
                   "mnv2_fused.inverted_residual: x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2,
                    "mnv2_fused.inverted_residual: stride must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(w_expand.has_value() == b_expand.has_value(),
                    "mnv2_fused.inverted_residual: w_expand and b_expand must both be given or both be None");
  BlockShape s;
  s.n = x.size(0);
  s.cin = x.size(1);
  s.h = x.size(2);
  s.w = x.size(3);
  TORCH_CHECK_VALUE(s.h > 0 && s.w > 0, "mnv2_fused.inverted_residual: H and W must be positive, got ",
                    x.sizes());
  TORCH_CHECK_VALUE(w_dw.dim() == 3, "mnv2_fused.inverted_residual: w_dw must be (hidden, 3, 3), got ",
                    w_dw.sizes());
  s.hidden = w_dw.size(0);
  constexpr const char* op = "mnv2_fused.inverted_residual";
  TORCH_CHECK_VALUE(s.hidden > 0 && s.cin > 0, op, ": the input and hidden widths must be positive, got Cin ", s.cin,
                    " and hidden ", s.hidden);
  TORCH_CHECK_VALUE(b_proj.dim() == 1, op, ": b_proj must be 1-D (Cout), got ", b_proj.sizes());
  s.cout = b_proj.size(0);
  s.expand = w_expand.has_value();
  if (s.expand) {
    TORCH_CHECK_VALUE(b_expand->dim() == 1 && b_expand->size(0) == s.hidden, op, ": b_expand must have shape [",
                      s.hidden, "], got ", b_expand->sizes());
    check_matrix_weight(*w_expand, *b_expand, x, s.cin, op, "w_expand", "b_expand");
  } else {
    TORCH_CHECK_VALUE(s.hidden == s.cin, "mnv2_fused.inverted_residual: without an expand layer the depthwise "
                      "width must equal the input channels (", s.cin, "), got ", s.hidden);
  }
  check_weight(w_dw, x, "w_dw", {s.hidden, 3, 3});
  check_weight(b_dw, x, "b_dw", {s.hidden});
  check_matrix_weight(w_proj, b_proj, x, s.hidden, op, "w_proj", "b_proj");
  s.stride = stride;
  s.residual = residual;
  TORCH_CHECK_VALUE(!residual || (stride == 1 && s.cin == s.cout),
                    "mnv2_fused.inverted_residual: a residual block needs stride 1 and Cin == Cout, got stride ",
                    stride, ", Cin ", s.cin, ", Cout ", s.cout);
  s.oh = conv3x3_out(s.h, stride);
  s.ow = conv3x3_out(s.w, stride);
  return s;
}

// The output keeps the input's memory format: channels_last when x is channels_last-contiguous
// (and not also plain contiguous), else NCHW. mnv2_fused/reference.py:output_memory_format mirrors it.
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous() ? at::MemoryFormat::ChannelsLast
                                                                              : at::MemoryFormat::Contiguous;
}

inline at::Tensor empty_output(const at::Tensor& x, const BlockShape& s) {
  return at::empty({s.n, s.cout, s.oh, s.ow}, x.options().memory_format(output_memory_format(x)));
}

inline void check_out(const at::Tensor& out, const at::Tensor& x, const BlockShape& s) {
  TORCH_CHECK_VALUE(out.sizes() == at::IntArrayRef({s.n, s.cout, s.oh, s.ow}),
                    "mnv2_fused.inverted_residual_out: out must have shape ", at::IntArrayRef({s.n, s.cout, s.oh, s.ow}),
                    ", got ", out.sizes());
  TORCH_CHECK_TYPE(out.scalar_type() == x.scalar_type(), "mnv2_fused.inverted_residual_out: out has dtype ",
                   out.scalar_type(), " but x has dtype ", x.scalar_type());
  TORCH_CHECK(out.device() == x.device(), "mnv2_fused.inverted_residual_out: out is on ", out.device(),
              " but x is on ", x.device());
}


// mnv2_fused::stem_inverted_residual: the network's stem (3x3 convolution, BN folded, ReLU6) and the
// expand-free block after it. Returns the block's shape with `hidden` at the stem's resolution.
struct StemShape {
  BlockShape block;
  int64_t hh, hw;  // the stem's output size
  int64_t stem_stride;
};

inline StemShape check_stem(const at::Tensor& x, const at::Tensor& w_stem, const at::Tensor& b_stem,
                            int64_t stem_stride, const at::Tensor& w_dw, const at::Tensor& b_dw,
                            const at::Tensor& w_proj, const at::Tensor& b_proj, int64_t stride) {
  constexpr const char* op = "mnv2_fused.stem_inverted_residual";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE((stem_stride == 1 || stem_stride == 2) && (stride == 1 || stride == 2), op,
                    ": strides must be 1 or 2, got ", stem_stride, " and ", stride);
  TORCH_CHECK_VALUE(w_stem.dim() == 4 && w_dw.dim() == 3 && b_proj.dim() == 1, op,
                    ": expected w_stem (hidden, Cin, 3, 3), w_dw (hidden, 3, 3), b_proj (Cout), got ",
                    w_stem.sizes(), ", ", w_dw.sizes(), ", ", b_proj.sizes());
  StemShape st;
  BlockShape& s = st.block;
  s.n = x.size(0), s.cin = x.size(1), s.h = x.size(2), s.w = x.size(3);
  TORCH_CHECK_VALUE(s.h > 0 && s.w > 0, op, ": H and W must be positive, got ", x.sizes());
  s.hidden = w_stem.size(0);
  s.cout = b_proj.size(0);
  check_weight(w_stem, x, "w_stem", {s.hidden, s.cin, 3, 3}, op);
  check_weight(b_stem, x, "b_stem", {s.hidden}, op);
  check_weight(w_dw, x, "w_dw", {s.hidden, 3, 3}, op);
  check_weight(b_dw, x, "b_dw", {s.hidden}, op);
  check_matrix_weight(w_proj, b_proj, x, s.hidden, op, "w_proj", "b_proj");
  s.stride = stride;
  s.expand = true;
  s.residual = false;
  st.stem_stride = stem_stride;
  st.hh = conv3x3_out(s.h, stem_stride);
  st.hw = conv3x3_out(s.w, stem_stride);
  s.oh = conv3x3_out(st.hh, stride);
  s.ow = conv3x3_out(st.hw, stride);
  return st;
}

// mnv2_fused::pointwise_relu6_mean: the network's last 1x1 convolution (BN folded), ReLU6 and the
// global average pool, (N, Cin, H, W) -> (N, Cout).
inline void check_pointwise_pool(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  constexpr const char* op = "mnv2_fused.pointwise_relu6_mean";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, op, ": H and W must be positive, got ", x.sizes());
  check_matrix_weight(w, b, x, x.size(1), op);
}

// mnv2_fused::linear: (N, K) @ (O, K)^T + (O).
inline void check_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  constexpr const char* op = "mnv2_fused.linear";
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be (N, K), got ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating-point tensor, got ",
                   x.scalar_type());
  check_matrix_weight(w, b, x, x.size(1), op);
}

}  // namespace mnv2_fused
