// The op schema, declared once. Kernels register per device in csrc/cpu and csrc/cuda; the
// Python module that loads them is csrc/python_module.cpp.
#include <torch/library.h>

#include <string>

#include "cpu/isa.h"

TORCH_LIBRARY(mnv2_fused, m) {
  // x: (N, Cin, H, W), any memory format. Weights have BN folded in:
  //   w_expand (hidden, Cin), b_expand (hidden)     -- both None when expand_ratio == 1
  //   w_dw (hidden, 3, 3), b_dw (hidden)            -- depthwise 3x3, padding 1
  //   w_proj (Cout, hidden), b_proj (Cout)          -- linear projection
  // Returns (N, Cout, H', W') in x's memory format.
  m.def(
      "inverted_residual(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, Tensor b_dw, "
      "Tensor w_proj, Tensor b_proj, int stride, bool residual) -> Tensor");
  // The same, writing into a preallocated `out` of the output's shape (any strides).
  m.def(
      "inverted_residual_out(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, Tensor b_dw, "
      "Tensor w_proj, Tensor b_proj, int stride, bool residual, Tensor(a!) out) -> ()");
  // The inverted-residual family's block (MobileNetV2/V3, MnasNet, EfficientNet):
  //   expand 1x1 (w_expand (hidden, Cin) or None) + act -> depthwise k x k (w_dw (hidden, k, k),
  //   k 1/3/5/7, stride 1/2, dilation; symmetric padding (k - 1) * dilation / 2, or TensorFlow's
  //   "same" when same_padding) + act -> optional squeeze-and-excite (w_se_reduce (se, hidden),
  //   b_se_reduce, se_activation, w_se_expand (hidden, se), b_se_expand, se_gate) -> projection
  //   w_proj (Cout, hidden) (+ x). act: relu, relu6, silu, hardswish; se_gate: sigmoid or hardsigmoid.
  //   BN is folded into every convolution. Returns (N, Cout, H', W') in x's memory format.
  m.def(
      "mbconv(Tensor x, Tensor? w_expand, Tensor? b_expand, Tensor w_dw, Tensor b_dw, Tensor? w_se_reduce, "
      "Tensor? b_se_reduce, Tensor? w_se_expand, Tensor? b_se_expand, Tensor w_proj, Tensor b_proj, int stride, "
      "int dilation, bool same_padding, str activation, str se_activation, str se_gate, bool residual) -> Tensor");
  // The network's stem fused with the expand-free block after it: a 3x3 convolution
  //   w_stem (hidden, Cin, 3, 3), b_stem (hidden), stride stem_stride, padding 1, ReLU6
  // takes the place of the expand layer, so its output never exists. Returns channels_last.
  m.def(
      "stem_inverted_residual(Tensor x, Tensor w_stem, Tensor b_stem, int stem_stride, Tensor w_dw, "
      "Tensor b_dw, Tensor w_proj, Tensor b_proj, int stride) -> Tensor");
  // A network's first layer on its own (EfficientNet's and MobileNetV3's stems): a 3x3
  // convolution w (Cout, Cin, 3, 3), b (Cout) with BN folded, padding 1, stride 1 or 2, then
  // `activation` (as linear's). Returns channels_last, as the blocks after it read it.
  m.def("conv3x3(Tensor x, Tensor w, Tensor b, int stride, str activation=\"none\") -> Tensor");
  // The network's head: 1x1 convolution w (Cout, Cin), b (Cout) with BN folded, ReLU6, and the
  // global average pool, (N, Cin, H, W) -> (N, Cout), so the (N, Cout, H, W) tensor never exists.
  // w may also come packed, (ceil(Cout/16), Cin, 16) contiguous, output channels 16g..16g+15 in
  // block g (zero past Cout): the layout the model caches, which streams from memory fastest.
  m.def("pointwise_relu6_mean(Tensor x, Tensor w, Tensor b) -> Tensor");
  // The classifier, x (N, K) @ w (O, K)^T + b (O): torch's own linear, with w (O, K) any strides
  // or packed as above, (ceil(O/16), K, 16); then `activation` (none, relu, relu6, silu,
  // hardswish, sigmoid or hardsigmoid). Over the pixels of a channels_last tensor, a 1x1 convolution.
  m.def("linear(Tensor x, Tensor w, Tensor b, str activation=\"none\") -> Tensor");
  // A 1x1 convolution, x (N, Cin, H, W) with w (Cout, Cin) or packed, b (Cout), then `activation`:
  // linear over the pixels (no copy of channels_last input). Returns channels_last.
  m.def("pointwise(Tensor x, Tensor w, Tensor b, str activation=\"none\") -> Tensor");
  // A converted MobileNetV2's whole inference forward, in one call: stem_inverted_residual with
  // `stem` (6 tensors), inverted_residual per block (6 weights each, in order, then its stride and
  // residual flag), pointwise_relu6_mean with `head`, and linear with `classifier` when given.
  m.def(
      "mobilenet_v2_forward(Tensor x, Tensor[] stem, int stem_stride, int stride, Tensor?[] blocks, "
      "int[] block_strides, int[] block_residuals, Tensor[] head, Tensor[] classifier) -> Tensor");
  // The instruction set the CPU kernel runs with: avx512, avx2 or generic.
  m.def("cpu_isa() -> str", [] { return std::string(mnv2_fused::cpu::cpu_isa().name); });
}
