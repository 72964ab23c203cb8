// How a call of the CUDA kernel is cut up, and where each buffer lives in a CTA's shared memory.
// Plain C++ (no CUDA, no torch): the launcher and the tests' SIMT emulation use the same plan.
//
// A CTA owns a TH x TW tile of output pixels of one image and a slice of the output channels, and
// walks the hidden channels in chunks of HC:
//   expand:    hid[in px][HC]      = relu6(xs[in px][Cin] @ We[HC][Cin]^T + be)   (tensor cores)
//   depthwise: dw[out px][HC]      = relu6(3x3 taps over hid + bd)
//   project:   acc[out px][Cout'] += dw @ Wp[Cout'][HC]^T                        (tensor cores)
// "in px" are the tile's input pixels with the depthwise's halo; acc stays in registers across
// chunks. When there are fewer CTAs than SMs, the chunks are split over `splits` CTAs whose partial
// projections are summed in a float workspace (then a second kernel adds bias and residual).
#pragma once
#include <algorithm>
#include <cstdint>

#include "../layout.h"

namespace mnv2_fused {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Accumulator tiles (16 x 16 fp32) a warp holds in registers: 8 registers each per thread.
constexpr int kMaxAccPerWarp = 10;
constexpr int kMaxAccTiles = kWarps * kMaxAccPerWarp;
// Output-channel tiles one CTA takes at most, so that its pixel tile keeps at least two rows of
// 16 pixels (more output channels go to other CTAs, each redoing expand and depthwise).
constexpr int kMaxCoutTiles = kMaxAccTiles / 2;
// Hidden channels per chunk, tried widest first: wider chunks mean fewer barriers per pixel.
constexpr int kChunkChoices[] = {64, 48, 32, 16};

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t ceil_div(int64_t v, int64_t m) { return (v + m - 1) / m; }
inline int64_t align128(int64_t bytes) { return round_up(bytes, 128); }

struct BlockDims {
  int64_t n, cin, h, w, hidden, cout, oh, ow, stride;
  bool expand, residual;
};

// Everything a CTA needs to find its work and its buffers. Byte offsets are into dynamic shared
// memory; leading dimensions ("ld", in elements) are padded by 16 bytes so that the rows of a
// 16 x 16 tile fall in different shared-memory banks.
struct TcPlan {
  int th, tw;                // output tile
  int in_h, in_w;            // input tile with halo: (th - 1) * stride + 3, likewise
  int tiles_h, tiles_w;      // tiles per image
  int in_rows, out_rows;     // in_h * in_w and th * tw, rounded up to 16 (the MMA's M)
  int hc;                    // hidden channels per chunk (a multiple of 16)
  int chunks, chunks_per_split, splits;
  int cout_part, cout_parts; // output channels per CTA (a multiple of 16), and how many slices
  int cin_pad;               // Cin rounded up to the MMA's K
  int x_ld, hid_ld, dw_ld, stage_ld;  // leading dimensions of xs / We, hid, dw / Wp, stage
  int64_t off_xs, off_we, off_be, off_hid, off_wd, off_dw, off_wp, off_stage, smem_bytes;
  int64_t ctas;              // tiles of all images times cout_parts (before the hidden split)
  double cost;               // the estimate the plan was chosen by
};

// The plan's buffers for a given tile and chunk; operand = bytes of an MMA input element (2 for
// fp16/bf16, 4 for the fp32 path's tf32 operands), k_step = the MMA's K (16, or 8 for tf32).
inline TcPlan layout_plan(const BlockDims& d, int th, int tw, int hc, int cout_part, int operand, int k_step) {
  TcPlan p{};
  p.th = th, p.tw = tw;
  p.in_h = (th - 1) * static_cast<int>(d.stride) + 3;
  p.in_w = (tw - 1) * static_cast<int>(d.stride) + 3;
  p.tiles_h = static_cast<int>(ceil_div(d.oh, th));
  p.tiles_w = static_cast<int>(ceil_div(d.ow, tw));
  p.in_rows = static_cast<int>(round_up(int64_t(p.in_h) * p.in_w, 16));
  p.out_rows = static_cast<int>(round_up(int64_t(th) * tw, 16));
  p.hc = hc;
  p.chunks = static_cast<int>(ceil_div(d.hidden, hc));
  p.chunks_per_split = p.chunks;
  p.splits = 1;
  p.cout_part = cout_part;
  p.cout_parts = static_cast<int>(ceil_div(d.cout, cout_part));
  p.cin_pad = static_cast<int>(round_up(d.cin, k_step));
  const int pad = 16 / operand;  // 16 bytes of padding per row, in operand elements
  p.x_ld = p.cin_pad + pad;
  p.hid_ld = hc + 4;  // floats
  p.dw_ld = hc + pad;
  p.stage_ld = cout_part + 4;  // floats
  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    const int64_t off = at;
    at += align128(bytes);
    return off;
  };
  p.off_xs = take(d.expand ? int64_t(p.in_rows) * p.x_ld * operand : 0);
  const int64_t chunk_begin = at;  // from here on, buffers are rewritten every chunk
  p.off_we = take(d.expand ? int64_t(hc) * p.x_ld * operand : 0);
  p.off_be = take(d.expand ? int64_t(16) * p.hid_ld * 4 : 0);
  p.off_hid = take(int64_t(p.in_rows) * p.hid_ld * 4);
  p.off_wd = take(int64_t(10) * hc * 4);  // 9 taps and the bias
  p.off_dw = take(int64_t(p.out_rows) * p.dw_ld * operand);
  p.off_wp = take(int64_t(cout_part) * p.dw_ld * operand);
  // The epilogue's staging of the accumulators reuses the chunk buffers, free by then.
  p.off_stage = chunk_begin;
  const int64_t stage_end = chunk_begin + align128(int64_t(p.out_rows) * p.stage_ld * 4);
  p.smem_bytes = std::max(at, stage_end);
  p.ctas = d.n * p.tiles_h * p.tiles_w * p.cout_parts;
  return p;
}

// Fixed cost of a chunk, in multiply-adds: three barriers of the whole CTA and the weights it
// stages (one element each).
constexpr double kChunkOverhead = 4096;

// Multiply-adds a CTA of plan p performs, padding included, plus its fixed costs: the chunks, and
// the partial sums it adds into the workspace when the hidden channels are split.
inline double cta_work(const BlockDims& d, const TcPlan& p) {
  const double hidden = double(p.chunks_per_split) * p.hc;
  const double expand = d.expand ? double(p.in_rows) * p.cin_pad * hidden : 0.0;
  const double weights = hidden * (p.cin_pad + p.cout_part + 10.0);
  const double partials = p.splits > 1 ? 4.0 * p.out_rows * p.cout_part : 0.0;
  return expand + double(p.out_rows) * hidden * (9.0 + p.cout_part) + weights +
         kChunkOverhead * p.chunks_per_split + partials;
}

// Tile sides tried for an output side of `o` pixels: `o` cut into 1 to 16 equal parts and, with
// `smaller`, every side under a sixteenth up to kMaxFixedSide too (a large image, whose sixteenths
// make tiles too large for the accumulators). Returns how many it wrote into `sides`.
constexpr int kMaxFixedSide = 32;
constexpr int kMaxSides = 16 + kMaxFixedSide;
inline int tile_sides(int64_t o, bool smaller, int (&sides)[kMaxSides]) {
  int count = 0;
  for (int k = 1; k <= 16; ++k) {
    const int side = static_cast<int>(ceil_div(o, k));
    if (count == 0 || side != sides[count - 1]) sides[count++] = side;
  }
  const int below = std::min(kMaxFixedSide, sides[count - 1] - 1);
  for (int side = smaller ? below : 0; side >= 1; --side) sides[count++] = side;
  return count;
}

// The plan with the least estimated time: the larger of the whole call's work spread over every
// SM and one CTA's own work (a grid smaller than the GPU is bound by its CTAs). Tiles range from
// the whole image down to a sixteenth of each side, and below that where none of those fits
// (tile_sides); ties go to the wider chunk.
inline TcPlan choose_plan(const BlockDims& d, int operand, int k_step, int sm_count, int64_t max_smem) {
  const int64_t cout_tiles = ceil_div(d.cout, 16);
  const int parts = static_cast<int>(ceil_div(cout_tiles, kMaxCoutTiles));
  const int cout_part = static_cast<int>(ceil_div(cout_tiles, parts) * 16);
  TcPlan best{};
  bool found = false;
  int rows[kMaxSides], cols[kMaxSides];
  for (int smaller = 0; smaller < 2 && !found; ++smaller) {  // smaller tiles only where no sixteenth fits
    const int n_rows = tile_sides(d.oh, smaller, rows), n_cols = tile_sides(d.ow, smaller, cols);
    for (int i = 0; i < n_rows; ++i) {
      const int th = rows[i];
      for (int j = 0; j < n_cols; ++j) {
        const int tw = cols[j];
        if (ceil_div(int64_t(th) * tw, 16) * (cout_part / 16) > kMaxAccTiles) continue;
        for (int hc : kChunkChoices) {
          if (hc > round_up(d.hidden, 16)) continue;  // no wider than the hidden width
          TcPlan p = layout_plan(d, th, tw, hc, cout_part, operand, k_step);
          if (p.smem_bytes > max_smem) continue;
          if (p.ctas > 0 && p.ctas < sm_count && p.chunks > 1) {  // split the hidden chunks over more CTAs
            const int want = static_cast<int>(std::min<int64_t>(p.chunks, ceil_div(sm_count, p.ctas)));
            p.chunks_per_split = static_cast<int>(ceil_div(p.chunks, want));
            p.splits = static_cast<int>(ceil_div(p.chunks, p.chunks_per_split));
          }
          const double total = double(p.ctas * p.splits) * cta_work(d, p);
          p.cost = std::max(total / sm_count, cta_work(d, p));
          if (!found || p.cost < best.cost) found = true, best = p;
        }
      }
    }
  }
  return best;  // smem_bytes == 0 when nothing fits (the launcher reports it)
}

}  // namespace cuda
}  // namespace mnv2_fused
