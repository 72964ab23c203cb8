// The tiling of a CPU kernel call, chosen by a cost model: estimated vector FMAs on the busiest
// worker, over a search of band, strip, chunk and hidden-group sizes.
#include "plan.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "tile_shares.h"

namespace mnv2_fused {
namespace cpu {
namespace {

// Cost, in rows, of the micro-tiles covering M rows of a panel NV vectors wide (the rows past whole
// tiles in tiles one row shorter where M allows, else tails of MR/2, MR/4), mirroring panel() in
// kernel_gemm.h. Short tiles cost more per row than they compute: too few accumulators to hide the
// loads, so a tile counts as at least kMinTileRows rows.
constexpr int64_t kMinTileRows = 3;

int64_t padded_rows(int64_t M, int64_t nv, const Isa& isa) {
  const int64_t mr1 = tile_rows(nv, isa.max_acc), mr2 = (mr1 + 1) / 2, mr3 = (mr1 + 3) / 4;
  if (shorter_tiles(M, mr1) > 0) return M;
  const int64_t full = M / mr1 * mr1;
  int64_t rem = M - full, rows = full;
  while (rem > 0) {
    const int64_t mr = rem > mr2 ? mr1 : rem > mr3 ? mr2 : mr3;
    rows += std::max(mr, std::min(kMinTileRows, mr1));
    rem -= std::min(rem, mr);
  }
  return rows;
}

// Fixed cost of one micro-tile, in vector-FMA units: loading and storing its accumulators (up to
// 24 vectors each way) and setting up its row pointers, about as long as 40 FMAs.
constexpr double kTileOverhead = 40;

// Vector FMAs (plus a per-micro-tile overhead) of an M x N x K GEMM, with gemm()'s panels.
double gemm_cost(int64_t M, int64_t N, int64_t K, const Isa& isa) {
  if (M <= 0 || N <= 0) return 0;
  const int64_t vectors = ceil_div(N, isa.lanes), panels = ceil_div(vectors, 4);
  double cost = 0;
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t nv = vectors / panels + (p < vectors % panels ? 1 : 0);
    const int64_t rows = padded_rows(M, nv, isa);
    cost += double(rows) * nv * K + double(ceil_div(rows, tile_rows(nv, isa.max_acc))) * kTileOverhead;
  }
  return cost;
}

// Output pixels per image up to which the hidden channels may be split across threads.
constexpr int64_t kMaxGroupPixels = 256;

// Vectors of hidden channels a worker takes at a time in a kept plan: one GEMM panel's width, so
// the expand runs whole micro-tiles. Measured on MobileNetV2's 14x14 and 7x7 blocks at batch 1
// (AVX2, 2 threads, in one process): 24-128 channels within 2-3% of each other, 16 slower (the
// expand's GEMM too narrow).
constexpr int64_t kKeptChunkVectors = 4;

// Fixed cost of one band (pointer set-up, loop control), in vector-FMA units.
constexpr double kBandOverhead = 400;

// How many runs of tiles each worker claims on average where they claim runs (Claiming::kRuns;
// MNV2_FUSED_CLAIMS overrides, read once: 1 is a fixed share per worker).
int64_t claims_per_worker() {
  static const int64_t claims = [] {
    const char* v = std::getenv("MNV2_FUSED_CLAIMS");
    return v && *v ? std::max<int64_t>(1, std::atoll(v)) : int64_t(4);
  }();
  return claims;
}

// Tiles a worker claims at a time where they claim runs: about claims_per_worker() runs each.
int64_t run_length(int64_t tiles, int64_t workers) {
  return std::max<int64_t>(1, ceil_div(tiles, workers * claims_per_worker()));
}

// Estimated vector FMAs on the busiest worker: walks the tiles as run_tiles does (the same shares
// or runs, the same ring reuse, the true size of the last band and strip). Shares as they start,
// before any worker takes from another's; runs claimed by whichever worker is free first.
double plan_cost(const BlockArgs& a, const TilePlan& p, int64_t batch, int64_t threads, const Isa& isa,
                 Claiming claiming) {
  const int64_t per_image = p.strips * p.bands, tiles = batch * per_image;
  // With hidden groups every worker walks every tile for its group's channels; a kept plan's
  // workers share every tile's channels (costed as one worker's, then split evenly).
  const bool one_walk = p.groups > 1 || p.kept;
  const int64_t workers = one_walk ? 1 : std::min(threads, tiles);
  const int64_t run = one_walk ? tiles : p.run;
  const int64_t k_expand = a.expand == Expand::kConv3x3 ? 9 * a.cin : a.cin;
  // Cost of one tile of an image, with and without the ring's rows from the band above.
  std::vector<double> fresh(per_image), reused(per_image);
  for (int64_t t = 0; t < per_image; ++t) {
    const int64_t band = t % p.bands, strip = t / p.bands;
    const int64_t rows = std::min(p.rows_out, a.oh - band * p.rows_out);
    const int64_t cols = std::min(p.cols_out, a.ow - strip * p.cols_out);
    const int64_t span = dw_span(a);
    const int64_t hc0 = strip * p.cols_out * a.stride - a.pad_left, ncols = (cols - 1) * a.stride + span;
    const int64_t in_cols = std::min(ncols, a.hw - hc0) - std::max<int64_t>(0, -hc0);
    const int64_t hr0 = band * p.rows_out * a.stride - a.pad_top, hr_end = hr0 + (rows - 1) * a.stride + span;
    auto in_rows = [&](int64_t lo) { return std::max<int64_t>(0, std::min(hr_end, a.hh) - std::max<int64_t>(lo, 0)); };
    for (int reuse = 0; reuse < 2; ++reuse) {
      const int64_t new_rows = in_rows(reuse ? hr0 + span - a.stride : hr0);
      double c = 0;
      for (int64_t c0 = 0; c0 < p.group_size; c0 += p.chunk) {
        const int64_t hc = std::min(p.chunk, p.group_size - c0);
        c += kBandOverhead;
        if (a.expand != Expand::kNone) c += gemm_cost(new_rows * in_cols, hc, k_expand, isa);
        c += double(rows * cols) * ceil_div(hc, isa.lanes) * a.k * a.k;  // depthwise
        c += gemm_cost(rows * cols, a.cout, hc, isa);
      }
      (reuse ? reused : fresh)[t] = c;
    }
  }
  // In a worker's range every tile reuses the ring except the first band of a strip and the
  // range's first tile. steady[] is the cost without the latter; its prefix sums give a range's
  // cost in O(1), so large batches plan as fast as small ones.
  std::vector<double> prefix(per_image + 1, 0.0);
  for (int64_t i = 0; i < per_image; ++i) {
    const bool reuse = p.carry && i % p.bands != 0;
    prefix[i + 1] = prefix[i] + (reuse ? reused[i] : fresh[i]);
  }
  auto steady_sum = [&](int64_t t0, int64_t t1) {  // tiles [t0, t1) of the whole call
    auto upto = [&](int64_t t) { return double(t / per_image) * prefix[per_image] + prefix[t % per_image]; };
    return upto(t1) - upto(t0);
  };
  // Tiles [t0, t1) as one worker's range: its first tile starts a fresh ring.
  auto range_cost = [&](int64_t t0, int64_t t1) {
    const int64_t i0 = t0 % per_image;
    const bool first_reuses = p.carry && i0 % p.bands != 0;  // in steady[], but it starts a fresh ring
    return steady_sum(t0, t1) + (first_reuses ? fresh[i0] - reused[i0] : 0.0);
  };
  std::vector<double> load(workers, 0.0);
  if (!one_walk && claiming == Claiming::kShares) {
    for (int64_t w = 0; w < workers; ++w)
      load[w] = range_cost(share_begin(w, tiles, workers), share_begin(w + 1, tiles, workers));
  } else {
    for (int64_t t0 = 0; t0 < tiles; t0 += run)  // the worker free first claims the next run
      *std::min_element(load.begin(), load.end()) += range_cost(t0, std::min(tiles, t0 + run));
  }
  const double worst = *std::max_element(load.begin(), load.end());
  return p.kept ? worst / double(threads) : worst;
}

// The search's bounds. Beyond 16 strips the column halo costs more than any tile saves. Hidden
// channels go in at most 16 chunks: narrower chunks leave the projection's K too short to pay for
// a micro-tile's fixed cost. A band holds at most 4 blocks of GEMM rows (1024 output pixels):
// larger bands gained nothing and their buffers leave the L2 cache.
constexpr int64_t kMaxStrips = 16, kMaxChunks = 16, kMaxBandPixels = 4 * kRowBlock;

// Plans remembered; past this many shapes (inputs whose size varies call after call) the cache
// starts over rather than grow without bound.
constexpr size_t kMaxCachedPlans = 4096;

// How much more a plan in bands of rows may be estimated to cost than the cheapest, after a stage
// that shared its rows out the same way (rows_before): each thread then reads the rows it wrote.
// In MobileNetV2 at batch 1 (2 threads, Zen 4) it puts blocks 3-5 in bands of rows after block 2's
// instead of tiles of columns: blocks 3, 4 and 5 ran 0.92-0.95x, 0.93-0.95x and 0.94x the time
// (two runs), where block 4 alone in bands of rows, after block 3's columns, ran 0.991x; the
// estimates had put block 4's two tilings within 0.3% of each other.
constexpr double kRowsMargin = 0.05;

using Key = std::array<int64_t, 19>;

TilePlan search(const BlockArgs& a, int64_t batch, int64_t threads, const Isa& isa, int64_t budget,
                Claiming claiming, bool rows_before) {
  // Splitting the hidden channels only pays when whole images cannot keep every thread busy, and
  // only on small images: there a band's halo is a large share of its rows, while the depthwise
  // output is small (measured: 7x7 and 14x14 gain; 28x28 loses, 1.02-1.2x slower kept). The
  // squeeze-and-excite's first pass (Claiming::kRuns) splits them in one group per worker; the
  // others keep the depthwise output (below).
  const bool split_hidden =
      batch < threads && threads > 1 && a.hidden >= 2 * threads * isa.lanes && a.oh * a.ow <= kMaxGroupPixels;
  std::vector<int64_t> group_sizes{a.hidden};
  if (split_hidden && claiming == Claiming::kRuns)
    group_sizes.push_back(round_up(ceil_div(a.hidden, threads), isa.lanes));
  bool found = false, found_rows = false;
  TilePlan best{}, smallest{}, best_rows{};  // best_rows: the cheapest in bands of one strip
  double best_cost = 0, best_rows_cost = 0;
  for (int64_t group_size : group_sizes) {
    std::vector<int64_t> chunks{group_size};
    for (int64_t k = 2; k <= kMaxChunks; ++k) {
      const int64_t c = round_up(ceil_div(group_size, k), isa.lanes);
      if (c < chunks.back()) chunks.push_back(c);
    }
    bool fits = false;
    int64_t prev_cols = 0;
    for (int64_t strips = 1; strips <= std::min(a.ow, kMaxStrips); ++strips) {
      const int64_t cols = ceil_div(a.ow, strips);
      if (cols == prev_cols) continue;
      prev_cols = cols;
      for (int64_t chunk : chunks) {
        for (int64_t rows = 1; rows <= a.oh; ++rows) {
          TilePlan p = make_plan(a, rows, cols, chunk, isa.lanes, group_size);
          p.run = run_length(batch * p.strips * p.bands, std::min(threads, batch * p.strips * p.bands));
          if (!smallest.floats || p.floats < smallest.floats) smallest = p;
          if (p.floats > budget) break;
          if (rows * cols > kMaxBandPixels) break;
          fits = true;
          const double cost = plan_cost(a, p, batch, threads, isa, claiming);
          if (!found || cost < best_cost) found = true, best = p, best_cost = cost;
          if (strips == 1 && (!found_rows || cost < best_rows_cost))
            found_rows = true, best_rows = p, best_rows_cost = cost;
        }
        if (fits) break;  // a wider chunk that fits always beats a narrower one
      }
    }
  }
  if (rows_before && batch < threads && found_rows && best.strips > 1 &&
      best_rows_cost <= best_cost * (1 + kRowsMargin))
    best = best_rows, best_cost = best_rows_cost;
  // Kept: one band of whole rows as tall as the scratch allows (the ring carries from band to band,
  // so more bands add little), while the depthwise output comes out of the same budget as the scratch.
  const int64_t kept_floats = batch * a.oh * a.ow * kept_ld(a, isa.lanes);
  if (split_hidden && claiming == Claiming::kShares && kept_floats <= budget * threads) {
    const int64_t chunk = std::min(kKeptChunkVectors * isa.lanes, round_up(a.hidden, isa.lanes));
    for (int64_t rows = a.oh; rows >= 1; --rows) {
      const TilePlan p = make_plan(a, rows, a.ow, chunk, isa.lanes, a.hidden, true);
      if (p.floats > budget) continue;
      const double cost = plan_cost(a, p, batch, threads, isa, claiming);
      if (!found || cost < best_cost) found = true, best = p, best_cost = cost;
      break;
    }
  }
  return found ? best : smallest;
}

}  // namespace

TilePlan choose_plan(const BlockArgs& a, int64_t batch, int64_t threads, const Isa& isa, int64_t budget_floats,
                     Claiming claiming, bool rows_before) {
  static std::mutex mutex;
  static std::map<Key, TilePlan> cache;
  const Key key{batch,  threads, budget_floats, static_cast<int64_t>(a.expand), a.expand_stride, a.cin,
                a.hidden, a.cout, a.h,     a.w,           a.stride,  isa.lanes,       isa.max_acc,     a.k,
                a.dilation, a.pad_top, a.pad_left, static_cast<int64_t>(claiming), rows_before};
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  const TilePlan plan = search(a, batch, threads, isa, budget_floats, claiming, rows_before);
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() > kMaxCachedPlans) cache.clear();
  cache.emplace(key, plan);
  return plan;
}

}  // namespace cpu
}  // namespace mnv2_fused
