// One tile of the fused inverted-residual block on the CPU, fp32, with no torch dependency so the
// same source compiles once per instruction set (tile_kernel_{avx512,avx2,generic}.cpp).
//
// A tile is a band of output rows of one image. Its hidden activations are produced a chunk of
// hidden channels at a time (the paper's t-way split): expand the chunk for the input rows the band
// needs (halo rows included, recomputed by the neighbouring band), depthwise + ReLU6, then accumulate
// the projection of that chunk into a per-tile accumulator. Only the chunk ever exists.
//
// Inside the tile every buffer is channel-major, [channel][pixel], so both 1x1 convolutions are
// GEMMs whose inner dimension runs over pixels and vectorizes cleanly. For stride 2 each input row
// is stored deinterleaved, odd columns then even columns, so the strided depthwise reads stay
// contiguous.
#pragma once
#include <cstdint>

namespace mnv2_fused {
namespace cpu {

// Width of one column panel of the GEMMs, in floats; every buffer row is padded to a multiple.
constexpr int64_t kPanel = 32;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

struct BlockArgs {
  const float* x;  // input, element strides below
  int64_t sxn, sxc, sxh, sxw;
  float* y;  // output
  int64_t syn, syc, syh, syw;
  const float* w_expand;  // (hidden, cin) contiguous, or null when there is no expand layer
  const float* b_expand;
  const float* w_dw;  // (hidden, 9)
  const float* b_dw;
  const float* w_proj;  // (cout, hidden)
  const float* b_proj;
  int64_t cin, hidden, cout, h, w, oh, ow, stride;
  bool residual;
};

// How a call is cut into tiles, and where each tile's scratch lives (offsets in floats).
struct TilePlan {
  int64_t rows_out;   // output rows per tile
  int64_t rows_in;    // input rows per tile, halo included
  int64_t chunk;      // hidden channels per chunk
  int64_t ld_in;      // row length of the packed input and of a hidden channel
  int64_t ld_out;     // row length of a depthwise-output channel and of the accumulator
  int64_t off_hidden, off_dw, off_acc, floats;  // scratch layout; x is packed at offset 0
};

inline TilePlan make_plan(const BlockArgs& a, int64_t rows_out, int64_t chunk) {
  TilePlan p;
  p.rows_out = rows_out;
  p.rows_in = (rows_out - 1) * a.stride + 3;
  p.chunk = chunk;
  // One extra panel: a GEMM that starts mid-row still has a full last panel to write.
  p.ld_in = round_up(p.rows_in * a.w, kPanel) + kPanel;
  p.ld_out = round_up(rows_out * a.ow, kPanel);
  const int64_t packed_x = a.w_expand ? a.cin * p.ld_in : 0;
  p.off_hidden = packed_x;
  p.off_dw = p.off_hidden + chunk * p.ld_in;
  p.off_acc = p.off_dw + chunk * p.ld_out;
  p.floats = p.off_acc + a.cout * p.ld_out;
  return p;
}

// Computes output rows [r0, r0 + plan.rows_out) (clipped to the image) of image n.
// scratch holds plan.floats floats, zeroed once before first use by this thread.
using TileFn = void (*)(const BlockArgs&, const TilePlan&, int64_t n, int64_t r0, float* scratch);

void run_tile_avx512(const BlockArgs&, const TilePlan&, int64_t, int64_t, float*);
void run_tile_avx2(const BlockArgs&, const TilePlan&, int64_t, int64_t, float*);
void run_tile_generic(const BlockArgs&, const TilePlan&, int64_t, int64_t, float*);

}  // namespace cpu
}  // namespace mnv2_fused
