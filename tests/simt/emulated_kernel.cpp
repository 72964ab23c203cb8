// The CUDA kernel's source (csrc/cuda/inverted_residual_kernel.cuh) compiled as host C++ against the
// SIMT emulation, behind a C entry point the tests call through ctypes (tests/simt_kernel.py).
// MNV2_KERNEL_SOURCE: a mutated copy of the kernel, for the tests that check the emulation catches it.
#ifdef MNV2_KERNEL_SOURCE
#include MNV2_KERNEL_SOURCE
#else
#include "../../csrc/cuda/inverted_residual_kernel.cuh"
#endif

#include <cstring>
#include <string>
#include <vector>

using namespace mnv2_fused::cuda;

namespace {

std::string last_error;
bool vector_rows[3];  // of the last run: x, w_expand, w_proj staged 16 bytes at a time

template <typename T>
std::string run(const void* x, const void* we, const void* be, const void* wd, const void* bd, const void* wp,
                const void* bp, void* y, const int64_t* dims, const int64_t* options, TcPlan* plan_out) {
  BlockDims d{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], 0, 0, dims[6], dims[7] != 0, dims[8] != 0};
  d.oh = mnv2_fused::conv_out(d.h, d.stride);
  d.ow = mnv2_fused::conv_out(d.w, d.stride);
  const int sm_count = static_cast<int>(options[0]);
  const int64_t max_smem = options[1];
  simt::Config config;
  config.order = static_cast<simt::Order>(options[2]);
  config.seed = static_cast<unsigned>(options[3]);
  config.skip_barrier_line = static_cast<int>(options[4]);

  const TcPlan p = choose_plan(d, static_cast<int>(sizeof(T)), Mma<T>::k, sm_count, max_smem);
  *plan_out = p;
  if (p.smem_bytes == 0) return "no plan fits the shared memory";
  if (options[5] == 0) return "";  // the plan only
  std::vector<float> partial(p.splits > 1 ? d.n * d.oh * d.ow * d.cout : 0, 0.f);
  KernelArgs<T> a{static_cast<const T*>(x), static_cast<T*>(y), partial.data(), static_cast<const T*>(we),
                  static_cast<const T*>(be), static_cast<const T*>(wd), static_cast<const T*>(bd),
                  static_cast<const T*>(wp), static_cast<const T*>(bp), d.n, int(d.cin), int(d.h), int(d.w),
                  int(d.hidden), int(d.cout), int(d.oh), int(d.ow), int(d.stride), d.expand, d.residual, p};
  set_vector_rows(a);
  vector_rows[0] = a.vec_x, vector_rows[1] = a.vec_we, vector_rows[2] = a.vec_wp;
  const dim3 grid(static_cast<unsigned>(p.ctas / p.cout_parts), static_cast<unsigned>(p.cout_parts),
                  static_cast<unsigned>(p.splits));
  std::string err = simt::launch(grid, dim3(kThreads), p.smem_bytes, config,
                                 [&a] { inverted_residual_tc_kernel<T>(a); });
  if (err.empty() && p.splits > 1) {
    const int64_t total = d.n * d.oh * d.ow * d.cout;
    err = simt::launch(dim3(static_cast<unsigned>(finish_blocks(total, sm_count))), dim3(kThreads), 0, config,
                       [&a] { finish_split_kernel<T>(a); });
  }
  return err;
}

}  // namespace

extern "C" {

// dtype: 0 float32, 1 float16, 2 bfloat16. dims: n, cin, h, w, hidden, cout, stride, expand,
// residual. options: SM count and shared-memory bytes the plan may use, thread order
// (simt::Order), its seed, the line of a __syncthreads to skip (-1: none), whether to run the
// kernel (0: only choose the plan). plan receives th, tw, hc, chunks, splits, cout_part,
// cout_parts, smem_bytes and the three 16-byte staging flags (tests/simt_kernel.py, Plan).
// Returns null, or what went wrong.
const char* mnv2_emulated_inverted_residual(int dtype, const void* x, const void* we, const void* be,
                                            const void* wd, const void* bd, const void* wp, const void* bp, void* y,
                                            const int64_t* dims, const int64_t* options, int64_t* plan) {
  TcPlan p{};
  vector_rows[0] = vector_rows[1] = vector_rows[2] = false;
  switch (dtype) {
    case 0: last_error = run<float>(x, we, be, wd, bd, wp, bp, y, dims, options, &p); break;
    case 1: last_error = run<__half>(x, we, be, wd, bd, wp, bp, y, dims, options, &p); break;
    case 2: last_error = run<__nv_bfloat16>(x, we, be, wd, bd, wp, bp, y, dims, options, &p); break;
    default: last_error = "unknown dtype";
  }
  const int64_t fields[] = {p.th,         p.tw,         p.hc,           p.chunks,        p.splits,       p.cout_part,
                            p.cout_parts, p.smem_bytes, vector_rows[0], vector_rows[1], vector_rows[2]};
  std::memcpy(plan, fields, sizeof fields);
  return last_error.empty() ? nullptr : last_error.c_str();
}

}  // extern "C"
