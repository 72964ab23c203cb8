// CUDA launcher of mnv2_fused::inverted_residual: NHWC views of the input and output, a plan per
// shape (tc_plan.h), one launch of the tensor-core kernel (inverted_residual_kernel.cuh), and a
// second, element-wise one when the hidden channels are split over CTAs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <limits>
#include <map>
#include <mutex>

#include "../op_entry_points.h"
#include "inverted_residual_kernel.cuh"

namespace mnv2_fused {
namespace cuda {
namespace {

struct DeviceLimits {
  int sm_count = 0;
  int max_smem = 0;  // dynamic shared memory one block may opt in to
};

DeviceLimits device_limits(int device) {
  static std::mutex mutex;
  static std::map<int, DeviceLimits> known;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find(device);
  if (it != known.end()) return it->second;
  DeviceLimits l;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l.sm_count, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&l.max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return known.emplace(device, l).first->second;
}

// Plans remembered per shape, dtype and device; past kMaxCachedPlans shapes the cache starts over.
constexpr size_t kMaxCachedPlans = 4096;

TcPlan plan_for(const BlockDims& d, int operand, int k_step, int device) {
  using Key = std::array<int64_t, 11>;
  static std::mutex mutex;
  static std::map<Key, TcPlan> cache;
  const Key key{d.n, d.cin, d.h, d.w, d.hidden, d.cout, d.stride, int64_t(d.expand) * 2 + d.residual, operand, k_step,
                device};
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const DeviceLimits l = device_limits(device);
  const TcPlan p = choose_plan(d, operand, k_step, l.sm_count, l.max_smem);
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() > kMaxCachedPlans) cache.clear();
  cache.emplace(key, p);
  return p;
}

template <typename T>
void launch(const at::Tensor& x_nhwc, const BlockShape& s, const std::optional<at::Tensor>& w_expand,
            const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
            const at::Tensor& w_proj, const at::Tensor& b_proj, const at::Tensor& y_nhwc) {
  const int device = x_nhwc.get_device();
  const BlockDims d{s.n, s.cin, s.h, s.w, s.hidden, s.cout, s.oh, s.ow, s.stride, s.expand, s.residual};
  const TcPlan p = plan_for(d, static_cast<int>(sizeof(T)), Mma<T>::k, device);
  TORCH_CHECK(p.smem_bytes > 0, "mnv2_fused.inverted_residual: no tile of the CUDA kernel fits this GPU's shared "
              "memory for Cin ", s.cin, ", hidden ", s.hidden, ", Cout ", s.cout);
  const int64_t tiles = p.ctas / p.cout_parts;
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max(), "mnv2_fused.inverted_residual: input too large for one "
              "CUDA launch (", tiles, " tiles)");
  at::Tensor partial;
  if (p.splits > 1) partial = at::zeros({s.n, s.oh, s.ow, s.cout}, x_nhwc.options().dtype(at::kFloat));
  auto ptr = [](const at::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); };
  KernelArgs<T> a{ptr(x_nhwc),
                        reinterpret_cast<T*>(y_nhwc.data_ptr()),
                        p.splits > 1 ? partial.data_ptr<float>() : nullptr,
                        s.expand ? ptr(*w_expand) : nullptr,
                        s.expand ? ptr(*b_expand) : nullptr,
                        ptr(w_dw),
                        ptr(b_dw),
                        ptr(w_proj),
                        ptr(b_proj),
                        s.n,
                        static_cast<int>(s.cin),
                        static_cast<int>(s.h),
                        static_cast<int>(s.w),
                        static_cast<int>(s.hidden),
                        static_cast<int>(s.cout),
                        static_cast<int>(s.oh),
                        static_cast<int>(s.ow),
                        static_cast<int>(s.stride),
                        s.expand,
                        s.residual,
                        p};
  set_vector_rows(a);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);
  auto kernel = inverted_residual_tc_kernel<T>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(p.smem_bytes)));
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(p.cout_parts), static_cast<unsigned>(p.splits));
  kernel<<<grid, kThreads, p.smem_bytes, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (p.splits > 1) {
    const int64_t total = s.n * s.oh * s.ow * s.cout;
    const int64_t blocks = finish_blocks(total, device_limits(device).sm_count);
    finish_split_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// The kernel reads and writes NHWC: NCHW or strided inputs are copied to NHWC first, and outputs
// that are not NHWC-dense are written through an NHWC buffer (channels_last is the fast layout).
void run_cuda(const at::Tensor& x, const BlockShape& s, const std::optional<at::Tensor>& w_expand,
              const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
              const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                   "mnv2_fused.inverted_residual: the CUDA kernel supports float32, float16 and bfloat16, got ",
                   x.scalar_type());
  if (y.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x_nhwc = x.permute({0, 2, 3, 1}).contiguous();
  at::Tensor y_nhwc = y.permute({0, 2, 3, 1});
  const bool direct = y_nhwc.is_contiguous();
  if (!direct) y_nhwc = at::empty({s.n, s.oh, s.ow, s.cout}, y.options());
  switch (x.scalar_type()) {
    case at::kFloat: launch<float>(x_nhwc, s, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, y_nhwc); break;
    case at::kHalf: launch<__half>(x_nhwc, s, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, y_nhwc); break;
    default: launch<__nv_bfloat16>(x_nhwc, s, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, y_nhwc); break;
  }
  if (!direct) y.copy_(y_nhwc.permute({0, 3, 1, 2}));
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv2_fused, CUDA, m) {
  m.impl("inverted_residual", &inverted_residual_functional<run_contiguous<run_cuda>>);
  m.impl("inverted_residual_out", &inverted_residual_out<run_contiguous<run_cuda>>);
}

}  // namespace cuda
}  // namespace mnv2_fused
