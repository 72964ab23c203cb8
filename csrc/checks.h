// Argument checks shared by every device's kernel: one place says what the op accepts.
#pragma once
#include <ATen/ATen.h>

#include <utility>

#include "layout.h"

namespace mnv2_fused {

struct BlockShape {
  int64_t n, cin, h, w;      // input
  int64_t hidden, cout;      // hidden width (cin * t), output channels
  int64_t oh, ow;            // output spatial size
  int64_t stride;
  bool expand, residual;
  int64_t k = 3, dilation = 1;        // depthwise kernel size and dilation
  int64_t pad_top = 1, pad_left = 1;  // depthwise zero padding before the first row / column
  int64_t se = 0;                     // squeeze-and-excite width; 0: none
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

// The squeeze-and-excite's weights: all four or none; w_reduce (se, hidden), b_reduce (se),
// w_expand (hidden, se), b_expand (hidden).
struct SEWeights {
  const std::optional<at::Tensor>& w_reduce;
  const std::optional<at::Tensor>& b_reduce;
  const std::optional<at::Tensor>& w_expand;
  const std::optional<at::Tensor>& b_expand;
};

// The arguments of mnv2_fused::mbconv (and, k = 3 without SE, of mnv2_fused::inverted_residual).
inline BlockShape check_mbconv(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& w_expand,
                               const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                               const at::Tensor& b_dw, const SEWeights& se, const at::Tensor& w_proj,
                               const at::Tensor& b_proj, int64_t stride, int64_t dilation, bool same_padding,
                               bool residual) {
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(dilation >= 1 && dilation <= 8, op, ": dilation must be 1 to 8, got ", dilation);
  TORCH_CHECK_VALUE(w_expand.has_value() == b_expand.has_value(), op,
                    ": w_expand and b_expand must both be given or both be None");
  BlockShape s;
  s.n = x.size(0);
  s.cin = x.size(1);
  s.h = x.size(2);
  s.w = x.size(3);
  TORCH_CHECK_VALUE(s.h > 0 && s.w > 0, op, ": H and W must be positive, got ", x.sizes());
  TORCH_CHECK_VALUE(w_dw.dim() == 3 && w_dw.size(1) == w_dw.size(2) && w_dw.size(1) % 2 == 1 && w_dw.size(1) <= 7,
                    op, ": w_dw must be (hidden, k, k) with k 1, 3, 5 or 7, got ", w_dw.sizes());
  s.hidden = w_dw.size(0);
  s.k = w_dw.size(1);
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
    TORCH_CHECK_VALUE(s.hidden == s.cin, op, ": without an expand layer the depthwise width must equal the input "
                      "channels (", s.cin, "), got ", s.hidden);
  }
  check_weight(w_dw, x, "w_dw", {s.hidden, s.k, s.k}, op);
  check_weight(b_dw, x, "b_dw", {s.hidden}, op);
  const int given = se.w_reduce.has_value() + se.b_reduce.has_value() + se.w_expand.has_value() +
                    se.b_expand.has_value();
  TORCH_CHECK_VALUE(given == 0 || given == 4, op, ": the squeeze-and-excite needs all four weights or none");
  if (given == 4) {
    TORCH_CHECK_VALUE(se.w_reduce->dim() == 2 && se.w_reduce->size(0) > 0, op,
                      ": w_se_reduce must be (se, hidden), got ", se.w_reduce->sizes());
    s.se = se.w_reduce->size(0);
    check_weight(*se.w_reduce, x, "w_se_reduce", {s.se, s.hidden}, op);
    check_weight(*se.b_reduce, x, "b_se_reduce", {s.se}, op);
    check_weight(*se.w_expand, x, "w_se_expand", {s.hidden, s.se}, op);
    check_weight(*se.b_expand, x, "b_se_expand", {s.hidden}, op);
  }
  check_matrix_weight(w_proj, b_proj, x, s.hidden, op, "w_proj", "b_proj");
  s.stride = stride;
  s.dilation = dilation;
  s.residual = residual;
  TORCH_CHECK_VALUE(!residual || (stride == 1 && s.cin == s.cout), op,
                    ": a residual block needs stride 1 and Cin == Cout, got stride ", stride, ", Cin ", s.cin,
                    ", Cout ", s.cout);
  // Symmetric padding keeps the size at stride 1; TensorFlow's "same" pads so that the output is
  // ceil(size / stride), the extra pixel at the end. Both give the same output size.
  s.oh = conv_out(s.h, stride);
  s.ow = conv_out(s.w, stride);
  const int64_t span = (s.k - 1) * dilation + 1;
  s.pad_top = same_padding ? same_pad_before(s.h, s.oh, stride, span) : (span - 1) / 2;
  s.pad_left = same_padding ? same_pad_before(s.w, s.ow, stride, span) : (span - 1) / 2;
  return s;
}

inline BlockShape check_block(const at::Tensor& x, const std::optional<at::Tensor>& w_expand,
                              const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                              const at::Tensor& b_dw, const at::Tensor& w_proj,
                              const at::Tensor& b_proj, int64_t stride, bool residual) {
  constexpr const char* op = "mnv2_fused.inverted_residual";
  TORCH_CHECK_VALUE(w_dw.dim() == 3 && w_dw.size(1) == 3 && w_dw.size(2) == 3, op,
                    ": w_dw must be (hidden, 3, 3), got ", w_dw.sizes());
  const std::optional<at::Tensor> none;
  return check_mbconv(op, x, w_expand, b_expand, w_dw, b_dw, SEWeights{none, none, none, none}, w_proj, b_proj,
                      stride, 1, false, residual);
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
  st.hh = conv_out(s.h, stem_stride);
  st.hw = conv_out(s.w, stem_stride);
  s.oh = conv_out(st.hh, stride);
  s.ow = conv_out(st.hw, stride);
  return st;
}

// mnv2_fused::conv3x3: w (Cout, Cin, 3, 3), b (Cout), stride 1 or 2, padding 1. Returns the
// output's (H', W').
inline std::pair<int64_t, int64_t> check_conv3x3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                                 int64_t stride) {
  constexpr const char* op = "mnv2_fused.conv3x3";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating-point tensor, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, op, ": H and W must be positive, got ", x.sizes());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK_VALUE(b.dim() == 1, op, ": b must be 1-D (Cout), got ", b.sizes());
  check_weight(w, x, "w", {b.size(0), x.size(1), 3, 3}, op);
  check_weight(b, x, "b", {b.size(0)}, op);
  return {conv_out(x.size(2), stride), conv_out(x.size(3), stride)};
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

// mnv2_fused::pointwise: a 1x1 convolution of (N, Cin, H, W).
inline void check_pointwise(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  constexpr const char* op = "mnv2_fused.pointwise";
  TORCH_CHECK_VALUE(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating-point tensor, got ",
                   x.scalar_type());
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
