// CPU kernels of mnv2_fused::pointwise_relu6_mean (the last 1x1 convolution, ReLU6 and the global
// average pool in one pass, parallel over images and blocks of output channels), of
// mnv2_fused::linear and of mnv2_fused::pointwise (linear over the pixels).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "isa.h"
#include "ops_cpu.h"
#include "team.h"
#include "weight_layout.h"

namespace mnv2_fused {
namespace cpu {
namespace {

// How much of each call's slice of the next weight (the classifier's) the head's micro-tiles
// prefetch: the whole slice on AMD cores, where it took MobileNetV2's classifier at batch 1 to
// 0.62-0.66x the time for a head 1.06-1.07x slower; its first quarter on Intel's, whose two 512-bit
// FMA units a core run the head twice as fast per cycle, so that the prefetches' traffic weighs
// more: on a 2-core Xeon the whole slice left the head at 190 us, the classifier at 82 (none: 157
// and 96), a quarter 167 and 82 (benchmarks/ab_builds.py, 100 rounds).
int64_t warm_share_divisor() {
  static const int64_t divisor = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_is("intel") ? int64_t(4) : int64_t(1);
#else
    return int64_t(1);
#endif
  }();
  return divisor;
}

}  // namespace

at::Tensor pointwise_relu6_mean(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  check_pointwise_pool(x, w, b);
  at::Tensor y = at::empty({x.size(0), b.size(0)}, x.options());
  pointwise_relu6_mean_into(x, w, b, nullptr, y);
  return y;
}

void pointwise_relu6_mean_into(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor* next,
                               at::Tensor& y) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat,
                   "mnv2_fused.pointwise_relu6_mean: the CPU kernel supports float32 only, got ", x.scalar_type());
  const int64_t n = x.size(0), cin = x.size(1), cout = b.size(0);
  if (y.numel() == 0) return;
  at::Tensor keep_w, keep_b;  // no copy when cached packed or (Cin, Cout)
  bool packed = false;
  const float* w_ptr = matrix_columns(w, keep_w, packed);
  PoolArgs a{x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3), w_ptr, packed,
             contiguous_ptr(b, keep_b), y.data_ptr<float>(), cin, cout, x.size(2), x.size(3)};
  const bool warm = next != nullptr && next->is_contiguous() && next->nbytes() > 0;
  const char* const next_bytes = warm ? static_cast<const char*>(next->data_ptr()) : nullptr;
  const int64_t next_size = warm ? static_cast<int64_t>(next->nbytes()) : 0;
  const Isa& isa = cpu_isa();
  const int64_t block = 4 * isa.lanes, blocks = (cout + block - 1) / block, items = n * blocks;
  team_parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
    PoolArgs call = a;
    for (int64_t item = begin; item < end; ++item) {
      // Each call warms the column block of the thread's next call, then its own slice of `next`:
      // the items' slices tile it in order, so each thread warms the share of it that the
      // classifier's column blocks give the same thread (the first threads, the first columns).
      // (A packed weight's column block is one run of memory: its groups of cin x kPackedColumns.)
      const int64_t next_j0 = (item + 1) % blocks * block;
      const int64_t next_cols = round_up(std::min(cout - next_j0, block), kPackedColumns);
      call.warm[0] = item + 1 < end && packed ? reinterpret_cast<const char*>(w_ptr + next_j0 * cin) : nullptr;
      call.warm_bytes[0] = call.warm[0] ? next_cols * cin * static_cast<int64_t>(sizeof(float)) : 0;
      if (warm) {
        call.warm[1] = next_bytes + item * next_size / items;
        call.warm_bytes[1] = ((item + 1) * next_size / items - item * next_size / items) / warm_share_divisor();
      }
      const int64_t j0 = item % blocks * block;
      isa.pointwise_pool(call, item / blocks, item / blocks + 1, j0, std::min(cout, j0 + block));
    }
  });
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::string_view activation) {
  check_linear(x, w, b);
  const Act act = parse_act(activation, "mnv2_fused.linear", "activation", /*none_allowed=*/true);
  at::Tensor y = at::empty({x.size(0), b.size(0)}, x.options());
  linear_into(x, w, b, act, y);
  return y;
}

void linear_into(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, Act act, at::Tensor& y) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, "mnv2_fused.linear: the CPU kernel supports float32 only, got ",
                   x.scalar_type());
  const int64_t n = x.size(0), o = b.size(0);
  if (y.numel() == 0) return;
  at::Tensor keep_w, keep_b;
  bool packed = false;
  const float* w_ptr = matrix_columns(w, keep_w, packed);
  run_linear({x.data_ptr<float>(), x.stride(0), x.stride(1), w_ptr, packed, contiguous_ptr(b, keep_b),
              y.data_ptr<float>(), x.size(1), o, act},
             n);
}

at::Tensor pointwise(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, c10::string_view activation) {
  check_pointwise(x, w, b);
  const Act act = parse_act(activation, "mnv2_fused.pointwise", "activation", /*none_allowed=*/true);
  check_cpu_float(x, "mnv2_fused.pointwise");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), wd = x.size(3), o = b.size(0);
  at::Tensor y = at::empty({n, o, h, wd}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  // Dense channels-last pixels are rows c floats apart, whatever the strides of size-1 dims.
  const at::Tensor rows = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor keep_w, keep_b;
  bool packed = false;
  const float* w_ptr = matrix_columns(w, keep_w, packed);
  run_linear({rows.data_ptr<float>(), c, 1, w_ptr, packed, contiguous_ptr(b, keep_b), y.data_ptr<float>(), c, o, act},
             n * h * wd);
  return y;
}

void run_linear(const LinearArgs& a, int64_t rows) {
  const Isa& isa = cpu_isa();
  // Column blocks, so every thread streams its own part of the weight.
  const int64_t block = 4 * isa.lanes, blocks = (a.o + block - 1) / block;
  team_parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    isa.linear(a, 0, rows, begin * block, std::min(a.o, end * block));
  });
}

TORCH_LIBRARY_IMPL(mnv2_fused, CPU, m) {
  m.impl("pointwise_relu6_mean", &pointwise_relu6_mean);
  m.impl("linear", &linear);
  m.impl("pointwise", &pointwise);
}

}  // namespace cpu
}  // namespace mnv2_fused
