// CPU kernel of mnv2_fused::inverted_residual: cuts the call into tiles (bands of output rows of
// one image), runs them in parallel, and picks the tile code for this CPU's instruction set.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../op_entry_points.h"
#include "tile_kernel.h"

namespace mnv2_fused {
namespace cpu {
namespace {

TileFn pick_tile_fn() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return run_tile_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return run_tile_avx2;
#endif
  return run_tile_generic;
}

// Scratch per thread, in floats, that the plan aims to stay under (L2-resident).
constexpr int64_t kScratchTarget = 64 * 1024;
// Output pixels per tile worth aiming for: enough columns for the GEMM panels.
constexpr int64_t kTilePixels = 512;

TilePlan choose_plan(const BlockArgs& a, int64_t batch, int64_t threads) {
  int64_t rows = std::min(a.oh, std::max<int64_t>(1, (kTilePixels + a.ow - 1) / a.ow));
  // Enough tiles to keep every thread busy when the batch alone does not.
  while (rows > 1 && batch * ((a.oh + rows - 1) / rows) < threads) rows = (rows + 1) / 2;
  // Hidden channels per chunk: as many as fit the target next to the packed input and accumulator.
  TilePlan one = make_plan(a, rows, 1);
  const int64_t fixed = one.floats - (one.ld_in + one.ld_out);
  int64_t chunk = (kScratchTarget - fixed) / (one.ld_in + one.ld_out);
  chunk = std::max<int64_t>(8, chunk / 8 * 8);
  chunk = std::min(chunk, a.hidden);
  return make_plan(a, rows, chunk);
}

void check_cpu_dtype(const at::Tensor& x) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat,
                   "mnv2_fused.inverted_residual: the CPU kernel supports float32 only, got ", x.scalar_type(),
                   " (use backend='reference' for other dtypes)");
}

// Writes the block's output into y (any strides; y must not overlap x).
void run_cpu(const at::Tensor& x, const BlockShape& s, const std::optional<at::Tensor>& w_expand,
             const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
             const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y) {
  check_cpu_dtype(x);
  if (y.numel() == 0) return;

  // The entry points made every weight contiguous.
  const at::Tensor& wd = w_dw, &bd = b_dw, &wp = w_proj, &bp = b_proj;
  const at::Tensor we = s.expand ? *w_expand : at::Tensor(), be = s.expand ? *b_expand : at::Tensor();

  BlockArgs a;
  a.x = x.data_ptr<float>();
  a.sxn = x.stride(0), a.sxc = x.stride(1), a.sxh = x.stride(2), a.sxw = x.stride(3);
  a.y = y.data_ptr<float>();
  a.syn = y.stride(0), a.syc = y.stride(1), a.syh = y.stride(2), a.syw = y.stride(3);
  a.w_expand = s.expand ? we.data_ptr<float>() : nullptr;
  a.b_expand = s.expand ? be.data_ptr<float>() : nullptr;
  a.w_dw = wd.data_ptr<float>();
  a.b_dw = bd.data_ptr<float>();
  a.w_proj = wp.data_ptr<float>();
  a.b_proj = bp.data_ptr<float>();
  a.cin = s.cin, a.hidden = s.hidden, a.cout = s.cout;
  a.h = s.h, a.w = s.w, a.oh = s.oh, a.ow = s.ow, a.stride = s.stride;
  a.residual = s.residual;

  const int64_t threads = at::get_num_threads();
  const TilePlan plan = choose_plan(a, s.n, threads);
  const int64_t tiles_per_image = (s.oh + plan.rows_out - 1) / plan.rows_out;
  const int64_t tiles = s.n * tiles_per_image;
  const int64_t workers = std::min(threads, tiles);
  // One scratch slab per worker, from the framework's allocator so memory tools see it. Zeroed so
  // the padding lanes of the GEMM panels hold ordinary numbers.
  at::Tensor scratch = at::zeros({workers, plan.floats}, x.options());
  float* scratch_base = scratch.data_ptr<float>();
  static const TileFn tile_fn = pick_tile_fn();

  // Split the tiles into `workers` contiguous ranges; each range owns one scratch slab, whatever
  // thread runs it.
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    for (int64_t wkr = begin; wkr < end; ++wkr) {
      float* slab = scratch_base + wkr * plan.floats;
      const int64_t t0 = tiles * wkr / workers, t1 = tiles * (wkr + 1) / workers;
      for (int64_t t = t0; t < t1; ++t)
        tile_fn(a, plan, t / tiles_per_image, (t % tiles_per_image) * plan.rows_out, slab);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv2_fused, CPU, m) {
  m.impl("inverted_residual", &inverted_residual_functional<run_cpu>);
  m.impl("inverted_residual_out", &inverted_residual_out<run_cpu>);
}

}  // namespace cpu
}  // namespace mnv2_fused
