// CPU kernel of mnv2_fused::conv3x3: a network's first 3x3 convolution (BN folded) and its
// activation in one pass, parallel over output rows. PyTorch runs such a stem as a convolution,
// a BatchNorm and an activation, three passes over a tensor of a few megabytes, and its
// convolution takes a slow path for 3 input channels (EfficientNet-B0's stem, 3 -> 32 channels at
// 224x224: 0.65 ms for the convolution alone at batch 1).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "isa.h"
#include "ops_cpu.h"
#include "team.h"
#include "weight_layout.h"

namespace mnv2_fused {
namespace cpu {

at::Tensor conv3x3(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t stride,
                   c10::string_view activation) {
  constexpr const char* op = "mnv2_fused.conv3x3";
  const auto [oh, ow] = check_conv3x3(x, w, b, stride);
  const Act act = parse_act(activation, op, "activation", /*none_allowed=*/true);
  check_cpu_float(x, op);
  const int64_t n = x.size(0), cout = b.size(0);
  at::Tensor y = at::empty({n, cout, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  BlockArgs a{};
  set_io(a, x, y);
  at::Tensor keep_w, keep_b;
  a.w_expand = packed_3x3(w, keep_w);
  a.expand_packed = true;
  a.b_expand = contiguous_ptr(b, keep_b);
  a.cin = x.size(1), a.h = x.size(2), a.w = x.size(3);
  a.expand_stride = stride;
  a.hidden = cout, a.hh = oh, a.hw = ow;
  a.act = act;
  const Isa& isa = cpu_isa();
  const int64_t scratch_floats = conv3x3_scratch_floats(ow, stride, a.cin);
  // A few rows per item: each is a GEMM of one output row's pixels.
  team_parallel_for(0, n * oh, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(scratch_floats);
    for (int64_t item = begin; item < end;) {  // runs of rows within one image
      const int64_t image = item / oh, r0 = item % oh, r1 = std::min(oh, r0 + (end - item));
      isa.conv3x3_rows(a, image, r0, r1, scratch.data());
      item += r1 - r0;
    }
  });
  return y;
}

TORCH_LIBRARY_IMPL(mnv2_fused, CPU, m) { m.impl("conv3x3", &conv3x3); }

}  // namespace cpu
}  // namespace mnv2_fused
