// CPU kernels of mnv2_fused::inverted_residual and mnv2_fused::stem_inverted_residual: lay the
// weights out for the tile kernel, choose the tiling, and run the tiles in parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "../op_entry_points.h"
#include "chain_scratch.h"
#include "isa.h"
#include "ops_cpu.h"
#include "plan.h"
#include "team.h"
#include "tile_shares.h"
#include "weight_layout.h"

namespace mnv2_fused {
namespace cpu {
namespace {

// Scratch per image in flight: one image's activations plus its scratch stay under
// kWorkingSetBytes, or, when the activations alone exceed that, the scratch is at most an eighth of
// them. So the scratch never sets a network's peak memory, while small images get tiles large
// enough to be efficient. Per worker it stays within [kMinScratchBytes, kMaxScratchBytes] (L2).
constexpr int64_t kWorkingSetBytes = 1024 * 1024;
constexpr int64_t kMinScratchBytes = 16 * 1024, kMaxScratchBytes = 512 * 1024;

int64_t scratch_budget_floats(int64_t images, int64_t x_floats, int64_t y_floats, int64_t workers) {
  const int64_t batch = std::max<int64_t>(1, images);
  const int64_t image_bytes = (x_floats + y_floats) / batch * static_cast<int64_t>(sizeof(float));
  const int64_t per_image = std::max(image_bytes / 8, kWorkingSetBytes - image_bytes);
  const int64_t per_worker = per_image * std::min(batch, workers) / std::max<int64_t>(1, workers);
  return std::clamp(per_worker, kMinScratchBytes, kMaxScratchBytes) / static_cast<int64_t>(sizeof(float));
}

// A kept plan (small images, fewer images than threads) in two passes: the depthwise output of
// every hidden channel, kept, then its projection. In the first pass the workers take chunks of
// hidden channels, in the second blocks of output pixels and channels, each from a share of its
// own and then from the others' (TileShares), so a worker slowed down does less; and every output
// is one sum over all the hidden channels in one order, whoever computes it. Against one group of
// hidden channels per worker, each projecting them into a partial output that a third pass summed,
// no slower (MobileNetV2 at batch 1, 2 threads, Zen 3; README, How the CPU kernel works: blocks
// 6-16 mostly 0.99-1.02x the time, the forward 0.99-1.01x), and the outputs no longer follow the threads.
void run_kept(BlockArgs a, const TilePlan& plan, int64_t batch, const at::Tensor& x, int64_t threads,
              int64_t most_scratch) {
  const Isa& isa = cpu_isa();
  const int64_t pixels = batch * a.oh * a.ow;
  a.dw_store_ld = kept_ld(a, isa.lanes);
  // The kept output, then each worker's slab (from a whole cache line on).
  const int64_t kept_floats = round_up(pixels * a.dw_store_ld, 16);
  at::Tensor own;
  a.dw_store = scratch_floats(kept_floats + threads * plan.floats, most_scratch, x.options(), own);
  float* const slabs = a.dw_store + kept_floats;
  // The ring's lanes past the last channel are read (and discarded): see run_plan.
  const bool ragged = a.hidden % isa.lanes != 0;
  TileShares channels(ceil_div(a.hidden, isa.lanes), threads);  // in vectors
  team_parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    const int64_t rank = at::get_thread_num();
    BlockArgs mine = a;  // with the thread's prefetches (team.h: warm_while_computing)
    mine.warm = warm_cursor();
    for (int64_t w = begin; w < end; ++w) {
      float* slab = slabs + w * plan.floats;
      if (ragged) std::fill_n(slab, plan.floats, 0.f);
      for (int64_t v0, v1; channels.claim(rank, v0, v1, plan.chunk / isa.lanes);)
        isa.expand_depthwise(mine, plan, batch, v0 * isa.lanes, std::min(a.hidden, v1 * isa.lanes), slab);
    }
  });
  // The projection in blocks of a GEMM panel's columns by about four of its micro-tiles' rows. A
  // share is whole panels (its worker reads all the kept rows and its part of the weight) or whole
  // blocks of rows (its part of the rows, all the weight): whichever of the two is the larger is
  // split. Panels as even as the GEMM's own (for_each_panel), row blocks of whole micro-tiles as
  // even as the rows allow (the last one takes what is left), and shares of equal weight (rows
  // times columns). With panels of 4 vectors, 24 rows per block and shares of equal counts, 7x7
  // blocks at batch 1 (49 rows as 24 + 24 + 1, 160 columns as 64 + 64 + 32) left one worker idle
  // for a fifth of the pass.
  const int64_t vectors = ceil_div(a.cout, isa.lanes), panels = ceil_div(vectors, 4);
  const int64_t tile = tile_rows(4, isa.max_acc);
  const int64_t block_rows = round_up(ceil_div(pixels, ceil_div(pixels, 4 * tile)), tile);
  const int64_t row_blocks = ceil_div(pixels, block_rows);
  auto block_row = [&](int64_t b) { return std::min(pixels, b * block_rows); };
  auto panel_vector = [&](int64_t p) { return vectors * p / panels; };
  const bool by_rows = pixels * a.dw_store_ld > a.hidden * a.cout;
  auto panel_of = [&](int64_t i) { return by_rows ? i % panels : i / row_blocks; };
  auto block_of = [&](int64_t i) { return by_rows ? i / panels : i % row_blocks; };
  TileShares blocks(panels * row_blocks, threads, [&](int64_t i) {
    const int64_t p = panel_of(i), b = block_of(i);
    return (block_row(b + 1) - block_row(b)) * (panel_vector(p + 1) - panel_vector(p));
  });
  team_parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    const int64_t rank = at::get_thread_num();
    BlockArgs mine = a;
    mine.warm = warm_cursor();
    for (int64_t w = begin; w < end; ++w)
      for (int64_t i0, i1; blocks.claim(rank, i0, i1);)
        for (int64_t i = i0; i < i1; ++i) {
          const int64_t p = panel_of(i), b = block_of(i);
          isa.project_kept(mine, block_row(b), block_row(b + 1), panel_vector(p) * isa.lanes,
                           std::min(a.cout, panel_vector(p + 1) * isa.lanes), GateInto::kNone, nullptr);
        }
  });
}

// Runs the plan's tiles on PyTorch's threads, each worker with its own scratch slab from the
// framework's allocator (so memory tools see it; chain_scratch.h). With channel_sums ((N, hidden): the
// squeeze-and-excite's first pass) the depthwise output is added up per run of tiles (or per
// hidden group), each in a copy of its own, and the copies are summed into channel_sums in a
// fixed order at the end; no output is written. Per run, not per worker: which worker claims
// which runs varies from call to call, and sums grouped by worker changed the gate, and so the
// output, in its last bits from one call to the next.
void run_planned(const BlockArgs& a, int64_t batch, const at::Tensor& x, const TilePlan& plan, int64_t threads,
                 int64_t budget, at::Tensor channel_sums) {
  const Isa& isa = cpu_isa();
  const bool summing = channel_sums.defined();
  if (plan.kept) return run_kept(a, plan, batch, x, threads, threads * budget);
  const int64_t tiles = batch * plan.strips * plan.bands;
  const int64_t workers = plan.groups > 1 ? plan.groups : std::min(threads, tiles);
  // The ring's lanes past the last channel are read (and discarded) by whole-vector loads: zero
  // them so they hold ordinary numbers. Channel counts that fill whole vectors need no clearing (a
  // pixel's padding past its vectors, pixel_stride, is never read).
  const bool ragged = a.hidden % isa.lanes != 0 || plan.group_size % plan.chunk != 0 || plan.chunk % isa.lanes != 0 ||
                      a.hidden % plan.group_size != 0;
  const int64_t sums_floats = summing ? batch * a.hidden : 0;
  const int64_t run = plan.run;
  // Copies of the sums: one per run of tiles, or one per hidden group (see above).
  const int64_t copies = !summing ? 0 : plan.groups == 1 ? ceil_div(tiles, run) : workers;
  // One slab per worker, then the copies of the sums. Each worker clears its own slab before its
  // first tiles, on its own thread, and each copy's images before its tiles (clearing them all
  // here took a framework fill and a sum per call: 2-4% of a batch-1 forward of
  // MobileNetV3-Large).
  at::Tensor own;
  float* const base = scratch_floats(workers * plan.floats + copies * sums_floats, threads * budget, x.options(), own);
  auto scratch_of = [&](int64_t w) { return base + w * plan.floats; };
  auto sums_copy = [&](int64_t i) { return summing ? base + workers * plan.floats + i * sums_floats : nullptr; };
  std::vector<char> cleared(workers, 0);  // one byte per worker: no two threads share an element
  auto clear = [&](int64_t w) {
    if (!ragged || cleared[w]) return;
    cleared[w] = 1;
    std::fill_n(scratch_of(w), plan.floats, 0.f);
  };
  // The images whose tiles run r covers, [first, last].
  const int64_t per_image = plan.strips * plan.bands;
  auto run_images = [&](int64_t r) {
    const int64_t t0 = r * run, t1 = std::min(tiles, t0 + run);
    return std::make_pair(t0 / per_image, (t1 - 1) / per_image);
  };
  if (plan.groups == 1 && !summing) {
    TileShares shares(tiles, workers);
    team_parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
      const int64_t rank = at::get_thread_num();
      BlockArgs mine = a;  // with the thread's prefetches (team.h: warm_while_computing)
      mine.warm = warm_cursor();
      for (int64_t w = begin; w < end; ++w) {
        RingState ring;  // w's scratch holds it
        for (int64_t t0, t1; shares.claim(rank, t0, t1);) {
          clear(w);
          isa.run_tiles(mine, plan, t0, t1, 0, &ring, scratch_of(w), nullptr);
        }
      }
    });
  } else if (plan.groups == 1) {
    // Runs of the plan's length from a shared counter: a run's copy of the sums is found by its
    // number (t0 / run).
    std::atomic<int64_t> next{0};
    auto claim = [&](int64_t& t0, int64_t& t1) {
      int64_t at = next.load();
      for (;;) {
        if (at >= tiles) return false;
        if (next.compare_exchange_weak(at, at + run)) {
          t0 = at, t1 = std::min(tiles, at + run);
          return true;
        }
      }
    };
    team_parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w)
        for (int64_t t0, t1; claim(t0, t1);) {
          clear(w);
          float* sums = sums_copy(t0 / run);
          const auto [first, last] = run_images(t0 / run);
          std::fill(sums + first * a.hidden, sums + (last + 1) * a.hidden, 0.f);
          isa.run_tiles(a, plan, t0, t1, 0, nullptr, scratch_of(w), sums);
        }
    });
  } else {
    // Hidden groups (only while summing): each worker sums its own channels of every pixel.
    team_parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
      for (int64_t g = begin; g < end; ++g) {
        clear(g);
        std::fill_n(sums_copy(g), sums_floats, 0.f);
        isa.run_tiles(a, plan, 0, tiles, g, nullptr, scratch_of(g), sums_copy(g));
      }
    });
  }
  if (summing) {  // in the copies' order; a run's copy holds only its own images
    float* out = channel_sums.data_ptr<float>();
    std::fill_n(out, sums_floats, 0.f);
    for (int64_t i = 0; i < copies; ++i) {
      const auto [first, last] = plan.groups == 1 ? run_images(i) : std::make_pair(int64_t(0), batch - 1);
      for (int64_t j = first * a.hidden; j < (last + 1) * a.hidden; ++j) out[j] += sums_copy(i)[j];
    }
  }
}

// Workers take their tiles from contiguous shares (TileShares), carrying the ring from tile to
// tile. The squeeze-and-excite's sums are grouped by fixed runs of tiles instead (see above), which
// workers claim from a shared counter, each run computing its halo rows afresh; the plan is costed
// for the claiming it gets.
TilePlan plan_for(const BlockArgs& a, int64_t batch, int64_t threads, int64_t budget, bool summing,
                  bool rows_before = false) {
  return choose_plan(a, batch, threads, cpu_isa(), budget, summing ? Claiming::kRuns : Claiming::kShares,
                     rows_before);
}

void run_plan(const BlockArgs& a, int64_t batch, const at::Tensor& x, const at::Tensor& y,
              at::Tensor channel_sums = at::Tensor()) {
  const int64_t threads = at::get_num_threads();
  const int64_t budget = scratch_budget_floats(x.size(0), x.numel(), y.numel(), threads);
  const TilePlan plan = plan_for(a, batch, threads, budget, channel_sums.defined());
  run_planned(a, batch, x, plan, threads, budget, std::move(channel_sums));
}

// Whether a prepared call shares its image's rows out among the threads: bands of one strip, each
// worker a run of them, fewer images than threads.
bool splits_rows(const PreparedBlock& p) {
  return p.plan.strips == 1 && !p.plan.kept && p.plan.groups == 1 && p.batch < p.threads;
}

// The plan, for as many threads as there are now, and the scratch budget it was chosen for; none
// for an empty output (run_prepared runs nothing). rows_before: see choose_plan. allowed_floats:
// scratch per worker the caller lets the call have when that is more than its own rule gives (at
// most kMaxScratchBytes).
void plan_prepared(PreparedBlock& p, const BlockShape& s, bool rows_before = false, int64_t allowed_floats = 0) {
  p.batch = s.n;
  p.threads = at::get_num_threads();
  if (s.n * s.cout * s.oh * s.ow == 0) return;
  p.budget = scratch_budget_floats(s.n, s.n * s.cin * s.h * s.w, s.n * s.cout * s.oh * s.ow, p.threads);
  p.budget = std::max(p.budget, std::min<int64_t>(allowed_floats, kMaxScratchBytes / sizeof(float)));
  p.plan = plan_for(p.args, s.n, p.threads, p.budget, false, rows_before);
}

void set_shape(BlockArgs& a, const BlockShape& s) {
  a.expand = s.expand ? Expand::kPointwise : Expand::kNone;
  a.expand_stride = 1;
  a.cin = s.cin, a.hidden = s.hidden, a.cout = s.cout;
  a.h = s.h, a.w = s.w, a.hh = s.h, a.hw = s.w, a.oh = s.oh, a.ow = s.ow;
  a.stride = s.stride;
  a.k = s.k, a.dilation = s.dilation, a.pad_top = s.pad_top, a.pad_left = s.pad_left;
  a.residual = s.residual;
}


}  // namespace

void check_cpu_float(const at::Tensor& x, const char* op) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat, op, ": the CPU kernel supports float32 only, got ",
                   x.scalar_type(), " (use backend='reference' for other dtypes)");
}

void set_io(BlockArgs& a, const at::Tensor& x, at::Tensor& y) {
  a.x = x.data_ptr<float>();
  a.sxn = x.stride(0), a.sxc = x.stride(1), a.sxh = x.stride(2), a.sxw = x.stride(3);
  a.y = y.data_ptr<float>();
  a.syn = y.stride(0), a.syc = y.stride(1), a.syh = y.stride(2), a.syw = y.stride(3);
}

Act parse_act(c10::string_view name, const char* op, const char* what, bool none_allowed) {
  if (none_allowed && name == "none") return Act::kNone;
  for (const auto& [text, act] : {std::pair<const char*, Act>{"relu", Act::kReLU}, {"relu6", Act::kReLU6},
                                  {"silu", Act::kSiLU}, {"hardswish", Act::kHardswish}, {"sigmoid", Act::kSigmoid},
                                  {"hardsigmoid", Act::kHardsigmoid}})
    if (name == text) return act;
  TORCH_CHECK_VALUE(false, op, ": unknown ", what, " '", std::string(name), "'; expected ",
                    none_allowed ? "none, " : "", "relu, relu6, silu, hardswish, sigmoid or hardsigmoid");
  return Act::kNone;  // not reached
}

at::Tensor inverted_residual(const at::Tensor& x, const std::optional<at::Tensor>& w_expand,
                             const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                             const at::Tensor& w_proj, const at::Tensor& b_proj, int64_t stride, bool residual) {
  return inverted_residual_functional<run_inverted_residual>(x, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj, stride,
                                                             residual);
}

PreparedBlock prepare_inverted_residual(const BlockShape& s, const std::optional<at::Tensor>& w_expand,
                                        const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw,
                                        const at::Tensor& b_dw, const at::Tensor& w_proj, const at::Tensor& b_proj,
                                        const PreparedBlock* before, int64_t allowed_floats) {
  PreparedBlock p;
  p.weights.set_block(p.args, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj);
  set_shape(p.args, s);
  plan_prepared(p, s, before != nullptr && splits_rows(*before), allowed_floats);
  return p;
}

PreparedBlock prepare_stem_inverted_residual(const StemShape& st, const at::Tensor& w_stem, const at::Tensor& b_stem,
                                             const at::Tensor& w_dw, const at::Tensor& b_dw, const at::Tensor& w_proj,
                                             const at::Tensor& b_proj, int64_t allowed_floats) {
  const BlockShape& s = st.block;
  PreparedBlock p;
  BlockArgs& a = p.args;
  p.weights.set_stem(a, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj);
  a.expand = Expand::kConv3x3;
  a.expand_stride = st.stem_stride;
  a.cin = s.cin, a.hidden = s.hidden, a.cout = s.cout;
  a.h = s.h, a.w = s.w, a.hh = st.hh, a.hw = st.hw, a.oh = s.oh, a.ow = s.ow;
  a.stride = s.stride;
  a.residual = false;
  plan_prepared(p, s, false, allowed_floats);
  return p;
}

void run_prepared(const PreparedBlock& p, const at::Tensor& x, at::Tensor& y) {
  if (y.numel() == 0) return;
  BlockArgs a = p.args;
  set_io(a, x, y);
  run_planned(a, p.batch, x, p.plan, p.threads, p.budget, at::Tensor());
}

void run_inverted_residual(const at::Tensor& x, const BlockShape& s, const std::optional<at::Tensor>& w_expand,
                           const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                           const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y) {
  check_cpu_float(x, "mnv2_fused.inverted_residual");
  if (y.numel() == 0) return;
  run_prepared(prepare_inverted_residual(s, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj), x, y);
}

void run_stem_inverted_residual(const at::Tensor& x, const StemShape& st, const at::Tensor& w_stem,
                                const at::Tensor& b_stem, const at::Tensor& w_dw, const at::Tensor& b_dw,
                                const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y) {
  check_cpu_float(x, "mnv2_fused.stem_inverted_residual");
  if (y.numel() == 0) return;
  run_prepared(prepare_stem_inverted_residual(st, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj), x, y);
}

at::Tensor stem_inverted_residual(const at::Tensor& x, const at::Tensor& w_stem, const at::Tensor& b_stem,
                                  int64_t stem_stride, const at::Tensor& w_dw, const at::Tensor& b_dw,
                                  const at::Tensor& w_proj, const at::Tensor& b_proj, int64_t stride) {
  const StemShape st = check_stem(x, w_stem, b_stem, stem_stride, w_dw, b_dw, w_proj, b_proj, stride);
  const BlockShape& s = st.block;
  // channels_last always: the blocks after the stem read it in place.
  at::Tensor y = at::empty({s.n, s.cout, s.oh, s.ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  run_stem_inverted_residual(x, st, w_stem, b_stem, w_dw, b_dw, w_proj, b_proj, y);
  return y;
}

// The squeeze-and-excite's gate (N, hidden) from the sums of the depthwise output (scaled into
// means in place): reduce + bias + act, expand + bias + gate, on the classifier's GEMM. Its
// weights are read in place when stored input-channel-major (the modules cache them so).
at::Tensor se_gate(at::Tensor& sums, int64_t pixels, const at::Tensor& w1, const at::Tensor& b1,
                   const at::Tensor& w2, const at::Tensor& b2, Act act, Act gate) {
  const int64_t n = sums.size(0), hidden = sums.size(1), se = b1.size(0);
  float* mean = sums.data_ptr<float>();
  const float inv = 1.f / static_cast<float>(pixels);
  for (int64_t i = 0; i < n * hidden; ++i) mean[i] *= inv;
  at::Tensor z = at::empty({n, se}, sums.options()), out = at::empty({n, hidden}, sums.options());
  at::Tensor keep[4];
  bool packed1 = false, packed2 = false;
  const float* pw1 = matrix_columns(w1, keep[0], packed1);
  const float* pw2 = matrix_columns(w2, keep[1], packed2);
  run_linear({mean, hidden, 1, pw1, packed1, contiguous_ptr(b1, keep[2]), z.data_ptr<float>(), hidden, se, act}, n);
  run_linear({z.data_ptr<float>(), se, 1, pw2, packed2, contiguous_ptr(b2, keep[3]), out.data_ptr<float>(), se,
              hidden, gate},
             n);
  return out;
}

// The squeeze-and-excite's second pass from the kept depthwise output, in one parallel region:
// the rows are projected in items that stay within one image. Few rows (small images, batch 1) are
// projected in column parts, one per thread, so each thread streams its own part of the weight
// instead of all of it. Each item puts the gate where it costs the fewest multiplications: into
// its rows (in place when the item has them to itself, else into a copy of its own), or, when they
// outnumber its columns, into its columns of a copy of the weight. (The gate in a pass of its own
// over all rows or weights, in a parallel region of its own, cost up to 8%: MobileNetV3-Large's
// 14x14 block 11. EfficientNet-B0's 7x7 blocks at batch 1 project 49 rows in two parts of 160 or
// 96 columns: gating a copy of the rows instead of the weight took block 15's second pass from 110
// to 99 us.)
constexpr int64_t kProjectRowsPerItem = kRowBlock / 4;

void project_kept(const BlockArgs& a, int64_t n, const at::TensorOptions& options) {
  const Isa& isa = cpu_isa();
  const int64_t pixels = a.oh * a.ow;
  const int64_t threads = at::get_num_threads(), vectors = ceil_div(a.cout, isa.lanes);
  const int64_t per_image = ceil_div(pixels, kProjectRowsPerItem), row_items = n * per_image;
  const int64_t parts = row_items >= threads ? 1 : std::min(vectors, threads);
  struct Item {
    int64_t r0, r1, j0, j1;
    GateInto into;
  };
  auto item_at = [&](int64_t item) {
    Item it;
    const int64_t image = item / parts / per_image, part = item % parts;
    it.r0 = image * pixels + item / parts % per_image * kProjectRowsPerItem;
    it.r1 = std::min((image + 1) * pixels, it.r0 + kProjectRowsPerItem);
    it.j0 = std::min(a.cout, vectors * part / parts * isa.lanes);
    it.j1 = std::min(a.cout, vectors * (part + 1) / parts * isa.lanes);
    it.into = it.r1 - it.r0 > it.j1 - it.j0 ? GateInto::kWeightCopy
              : parts > 1                     ? GateInto::kRowsCopy
                                              : GateInto::kRows;
    return it;
  };
  // Floats of the largest copy an item makes; each thread has one such buffer, made only if needed.
  const int64_t weight_floats = a.hidden * (a.proj_packed ? round_up(a.cout, kPackedColumns) : a.cout);
  int64_t copy_floats = 0;
  for (int64_t item = 0; item < row_items * parts; ++item) {
    const Item it = item_at(item);
    if (it.into == GateInto::kWeightCopy) copy_floats = std::max(copy_floats, weight_floats);
    if (it.into == GateInto::kRowsCopy) copy_floats = std::max(copy_floats, (it.r1 - it.r0) * a.hidden);
  }
  const at::Tensor copies = copy_floats ? at::empty({threads, copy_floats}, options) : at::Tensor();
  team_parallel_for(0, row_items * parts, 1, [&](int64_t begin, int64_t end) {
    float* copy = copy_floats ? copies.data_ptr<float>() + at::get_thread_num() * copy_floats : nullptr;
    for (int64_t item = begin; item < end; ++item) {
      const Item it = item_at(item);
      isa.project_kept(a, it.r0, it.r1, it.j0, it.j1, it.into, copy);
    }
  });
}

// Whether the squeeze-and-excite's second pass projects a kept depthwise output instead of running
// the expand and depthwise again. Kept, the depthwise output is the hidden tensor after the stride.
// With an expand layer it is kept when, per image, it is no larger than kKeptDepthwiseBytes or
// than the block's own input and output together; without one (running it again costs just the
// depthwise and its activation) only when the whole batch's is no larger than kKeptDepthwiseBytes.
// Measured on EfficientNet-B0's blocks at batch 1 and 8, both ways alternating
// (benchmarks/se_modes.py): keeping is 1.24-1.78x faster with an expand (up to 14 MiB kept at
// batch 8); without one 1.17x at batch 1 (1.5 MiB kept), 0.94x at batch 8.
// MNV2_FUSED_SE=recompute / keep forces one way (read at every call, for measuring both).
constexpr int64_t kKeptDepthwiseBytes = 2 * 1024 * 1024;

bool se_keeps_depthwise(const BlockShape& s) {
  const char* forced = std::getenv("MNV2_FUSED_SE");
  if (forced && std::string(forced) == "recompute") return false;
  if (forced && std::string(forced) == "keep") return true;
  const int64_t kept = s.oh * s.ow * s.hidden * static_cast<int64_t>(sizeof(float));
  const int64_t io = (s.h * s.w * s.cin + s.oh * s.ow * s.cout) * static_cast<int64_t>(sizeof(float));
  return s.expand ? kept <= std::max(kKeptDepthwiseBytes, io) : kept * s.n <= kKeptDepthwiseBytes;
}

at::Tensor mbconv(const at::Tensor& x, const std::optional<at::Tensor>& w_expand,
                  const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
                  const std::optional<at::Tensor>& w_se_reduce, const std::optional<at::Tensor>& b_se_reduce,
                  const std::optional<at::Tensor>& w_se_expand, const std::optional<at::Tensor>& b_se_expand,
                  const at::Tensor& w_proj, const at::Tensor& b_proj, int64_t stride, int64_t dilation,
                  bool same_padding, c10::string_view activation, c10::string_view se_activation,
                  c10::string_view se_gate_name, bool residual) {
  constexpr const char* op = "mnv2_fused.mbconv";
  const BlockShape s = check_mbconv(op, x, w_expand, b_expand, w_dw, b_dw,
                                    SEWeights{w_se_reduce, b_se_reduce, w_se_expand, b_se_expand}, w_proj, b_proj,
                                    stride, dilation, same_padding, residual);
  const Act act = parse_act(activation, op, "activation");
  TORCH_CHECK_VALUE(act != Act::kSigmoid && act != Act::kHardsigmoid, op,
                    ": the block's activation must be relu, relu6, silu or hardswish, got '", std::string(activation),
                    "'");
  const Act se_act = parse_act(se_activation, op, "se_activation");
  const Act gate = parse_act(se_gate_name, op, "se_gate");
  TORCH_CHECK_VALUE(gate == Act::kSigmoid || gate == Act::kHardsigmoid, op,
                    ": se_gate must be sigmoid or hardsigmoid, got '", std::string(se_gate_name), "'");
  check_cpu_float(x, op);
  at::Tensor y = empty_output(x, s);
  if (y.numel() == 0) return y;
  BlockArgs a;
  KernelWeights kw;
  set_io(a, x, y);
  kw.set_block(a, w_expand, b_expand, w_dw, b_dw, w_proj, b_proj);
  set_shape(a, s);
  a.act = act;
  if (s.se == 0) {
    run_plan(a, s.n, x, y);
    return y;
  }
  // The squeeze-and-excite needs the mean of the whole depthwise output before any projection. The
  // first pass only sums it per image and channel; the second either runs the whole block again
  // with the gate (the hidden tensor never exists), or, when the depthwise output is small enough
  // to keep (se_keeps_depthwise), projects the kept one.
  at::Tensor sums = at::empty({s.n, s.hidden}, x.options());
  const bool keep = se_keeps_depthwise(s);
  at::Tensor kept = keep ? at::empty({s.n * s.oh * s.ow, s.hidden}, x.options()) : at::Tensor();
  a.dw_store = keep ? kept.data_ptr<float>() : nullptr;
  a.dw_store_ld = s.hidden;
  run_plan(a, s.n, x, y, sums);
  const at::Tensor gate_values =
      se_gate(sums, s.oh * s.ow, *w_se_reduce, *b_se_reduce, *w_se_expand, *b_se_expand, se_act, gate);
  a.gate = gate_values.data_ptr<float>();
  if (keep) {
    project_kept(a, s.n, x.options());
  } else {
    run_plan(a, s.n, x, y);
  }
  return y;
}

TORCH_LIBRARY_IMPL(mnv2_fused, CPU, m) {
  m.impl("mbconv", &mbconv);
  m.impl("inverted_residual", &inverted_residual);
  m.impl("inverted_residual_out", &inverted_residual_out<run_inverted_residual>);
  m.impl("stem_inverted_residual", &stem_inverted_residual);
}

}  // namespace cpu
}  // namespace mnv2_fused
