// The fused inverted-residual block on the CPU, fp32, with no torch dependency so the same source
// compiles once per instruction set (tile_kernel_{avx512,avx2,generic}.cpp).
//
// Inside a tile every buffer is pixel-major, [pixel][channel], and every loop vectorizes over
// channels: the two 1x1 convolutions are GEMMs whose output columns are channels, the depthwise
// convolution is nine vector FMAs per pixel, and channels_last tensors are read and written in
// place, with no packing.
//
// A tile is a band of output rows of one vertical strip of one image. Its hidden activations live
// in a ring of hidden rows: consecutive bands of a strip share their halo rows instead of computing
// them twice. When the ring for every hidden channel would not fit the scratch budget, the hidden
// channels are processed in chunks (the paper's t-way split) and the projection is accumulated
// chunk by chunk; the halo rows are then recomputed per band.
//
// When there are fewer images than threads, splitting an image into bands makes every thread
// recompute halo rows; the plan may instead split the hidden channels. The workers then make the
// depthwise output of every hidden channel, a chunk of channels at a time, and keep it (a.dw_store);
// a second pass projects it, the workers taking blocks of output pixels and channels. (The
// squeeze-and-excite's first pass, which projects nothing, splits them into groups, one per worker.)
#pragma once
#include <algorithm>
#include <cstdint>

#include "../layout.h"

namespace mnv2_fused {
namespace cpu {

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t ceil_div(int64_t v, int64_t m) { return (v + m - 1) / m; }

// How the hidden activations are made from the input.
enum class Expand : int {
  kNone = 0,       // hidden = input (expand ratio 1)
  kPointwise = 1,  // 1x1 convolution
  kConv3x3 = 3,    // 3x3 convolution, padding 1, stride `expand_stride` (the network's stem)
};

// Activations: of the expand and the depthwise (one per block in every supported family), of the
// squeeze-and-excite's reduce layer, and its gate.
enum class Act : int { kNone = 0, kReLU = 1, kReLU6 = 2, kSiLU = 3, kHardswish = 4, kSigmoid = 5, kHardsigmoid = 6 };

// Memory a thread prefetches while it computes (into its L2 cache: the next stage's weights, its
// share of them), up to kWarmRuns runs of bytes [next, end), taken from the front in order.
constexpr int kWarmRuns = 4;
struct WarmCursor {
  const char* next[kWarmRuns] = {};
  const char* end[kWarmRuns] = {};
  int run = kWarmRuns;  // the first run not yet all taken
};

// Where the next `bytes` of the cursor's memory start, or null when none is left or there is no
// cursor. The last take of a run may reach past its end (by less than `bytes`): its prefetches
// then touch whatever memory follows, which costs some traffic, never a fault.
inline const char* take_warm(WarmCursor* c, int64_t bytes) {
  if (c == nullptr) return nullptr;
  while (c->run < kWarmRuns && c->next[c->run] >= c->end[c->run]) ++c->run;
  if (c->run == kWarmRuns) return nullptr;
  const char* p = c->next[c->run];
  c->next[c->run] += bytes;
  return p;
}

struct BlockArgs {
  const float* x;  // input, element strides below
  int64_t sxn, sxc, sxh, sxw;
  float* y;  // output
  int64_t syn, syc, syh, syw;
  // Weights in the kernel's layout, output channel fastest (see weight_layout.h). The matrices
  // (K, O) are row-major, or packed when flagged: groups of kPackedColumns output channels, each
  // (K, kPackedColumns) contiguous, one after another (the 3x3 expand's always, packed per call).
  const float* w_expand;  // (K, hidden): K = cin for 1x1, 9 * cin ([dy][dx][c]) for 3x3; null for kNone
  const float* b_expand;  // (hidden)
  const float* w_dw;      // (k * k, hidden)
  const float* b_dw;      // (hidden)
  const float* w_proj;    // (hidden, cout)
  const float* b_proj;    // (cout)
  bool expand_packed, proj_packed;
  Expand expand;
  int64_t expand_stride;
  int64_t cin, hidden, cout;
  int64_t h, w;    // input
  int64_t hh, hw;  // hidden (differs from the input only for a strided 3x3 expand)
  int64_t oh, ow;  // output
  int64_t stride;  // depthwise
  int64_t k = 3, dilation = 1;         // depthwise kernel size and dilation
  int64_t pad_top = 1, pad_left = 1;   // depthwise zero padding before the first row / column
  Act act = Act::kReLU6;               // after the expand and after the depthwise
  const float* gate = nullptr;         // (N, hidden): squeeze-and-excite factors on the depthwise output
  float* dw_store = nullptr;           // (N, OH * OW, dw_store_ld): the depthwise output, kept (see below)
  int64_t dw_store_ld = 0;             // floats per pixel in dw_store (hidden or more)
  bool residual;
  WarmCursor* warm = nullptr;          // the calling thread's prefetches, made by its GEMMs' micro-tiles
};

// Hidden rows (or columns) the depthwise reads for one output row: (k - 1) * dilation + 1.
inline int64_t dw_span(const BlockArgs& a) { return (a.k - 1) * a.dilation + 1; }

// How a call is cut into tiles, and where each worker's scratch lives (offsets in floats).
struct TilePlan {
  int64_t rows_out, cols_out;    // output rows per band, output columns per strip
  int64_t strips, bands;         // per image
  int64_t chunk;                 // hidden channels per chunk
  int64_t groups, group_size;    // hidden channels split across workers (groups > 1) or not
  int64_t ring_rows, ring_cols;  // hidden rows / columns a band reads
  int64_t ld;                    // floats per pixel in the ring and the depthwise output (pixel_stride)
  int64_t acc_ld;                // floats per pixel in the projection accumulator
  int64_t im2col_k;              // floats per pixel of the 3x3-expand input patches
  // Scratch layout (the ring is at offset 0); input_rows: the 3x3 expand's input rows for a band.
  int64_t off_dw, off_acc, off_im2col, off_input_rows, floats;
  bool carry;                    // bands share halo rows: one chunk holds the group's every hidden channel, or kept
  int64_t run = 1;               // with one group and Claiming::kRuns: the tiles a worker claims at a time
  bool kept = false;             // hidden channels split, the depthwise output kept: one strip, carry
};

// Rows of a GEMM micro-tile NV vectors wide, with max_acc vector accumulators: as many as the
// accumulators allow, but no more than 8, because each row's A pointer must stay in a general
// register. With 12 rows of one vector GCC ran out of them: it kept the row pointers in vector
// registers and moved one back for each broadcast, which took most of the tile's time
// (MobileNetV2's stem with its first block, whose projection is 32 -> 16, ran 1.035x faster at
// batch 8 and 1.05-1.06x at batch 1 with 8 rows; 6 and 10 rows 1.03x).
constexpr int64_t tile_rows(int64_t nv, int64_t max_acc) { return max_acc / nv < 8 ? max_acc / nv : 8; }

// How many micro-tiles one row shorter than mr take the last of m rows, after whole tiles of mr
// (49 = 4 x 6 + 5 x 5): 0 where mr divides m, where too few rows are left for a whole tile before
// them (13 = 6 + 6 + 1), or where mr - 1 is under 2 rows.
constexpr int64_t shorter_tiles(int64_t m, int64_t mr) {
  const int64_t shorter = (mr - m % mr) % mr;
  return mr - 1 >= 2 && m - shorter * (mr - 1) >= mr ? shorter : 0;
}

// Row pointers of a GEMM are gathered into blocks of this many rows.
constexpr int64_t kRowBlock = 256;

// Floats after a 3x3 expand's patch buffer and after its input rows that whole-vector patch copies
// may write or read (conv3x3_patch): one vector of the widest instruction set.
constexpr int64_t kPatchSlack = 16;

// Floats from one pixel to the next in the ring and the depthwise output, for `floats` channels
// (whole vectors). The depthwise takes one channel vector at a time across a band's pixels, and the
// GEMMs read and write rows of them: a stride of a multiple of 4 cache lines puts those pixels in a
// quarter or less of the L1 cache's 64 sets, where they evict each other. One line more spreads
// them over all the sets. Measured with 384 channels (MobileNetV2's 14x14 blocks): the depthwise
// 1.4x faster on one thread, the blocks 1.03-1.05x faster at batch 8. Padding every even number of
// lines as well (32 and 96 channels in the early blocks, 288 and 480 in the later blocks' hidden
// groups at batch 1) measured level.
constexpr int64_t kLineFloats = 16;
inline int64_t pixel_stride(int64_t floats) {
  return floats % (4 * kLineFloats) == 0 ? floats + kLineFloats : floats;
}

// Floats per pixel of a kept plan's depthwise output (a.dw_store_ld).
inline int64_t kept_ld(const BlockArgs& a, int64_t lanes) { return pixel_stride(round_up(a.hidden, lanes)); }

// The plan, and the scratch floats one worker needs, for bands of `rows` x `cols` output pixels.
// Kept (cols: the whole width): every hidden channel, `chunk` of them through every band at a time.
inline TilePlan make_plan(const BlockArgs& a, int64_t rows, int64_t cols, int64_t chunk, int64_t lanes,
                          int64_t group_size, bool kept = false) {
  TilePlan p;
  p.kept = kept;
  p.group_size = kept ? a.hidden : std::min(group_size, a.hidden);
  p.groups = ceil_div(a.hidden, p.group_size);
  chunk = std::min(chunk, p.group_size);
  p.rows_out = rows;
  p.cols_out = cols;
  p.strips = ceil_div(a.ow, cols);
  p.bands = ceil_div(a.oh, rows);
  p.chunk = chunk;
  p.carry = kept || chunk >= p.group_size;  // kept: a chunk's ring goes from band to band
  p.ring_rows = (rows - 1) * a.stride + dw_span(a);
  p.ring_cols = (cols - 1) * a.stride + dw_span(a);
  p.ld = pixel_stride(round_up(chunk, lanes));
  p.acc_ld = round_up(a.cout, lanes);
  p.im2col_k = a.expand == Expand::kConv3x3 ? 9 * a.cin : 0;
  p.off_dw = p.ring_rows * p.ring_cols * p.ld;
  p.off_acc = p.off_dw + (kept ? 0 : rows * cols * p.ld);  // kept: the depthwise writes a.dw_store
  p.off_im2col = p.off_acc + (p.carry ? 0 : rows * cols * p.acc_ld);
  // A 3x3 expand's patches and input rows, each in whole cache lines, so that every worker's
  // scratch (one after another) starts on one: off a line, each of the ring's and the depthwise
  // output's vectors spans two lines (the depthwise in a loop of its own, 16 bytes off: 1.5x as
  // long). The patches (27 floats a pixel in a stem) had put the second worker's scratch off a line:
  // MobileNetV2's stem with its first block took 0.96-0.97x the time at batch 1 with this (Zen 4).
  const int64_t patches = std::min(kRowBlock, p.ring_rows * p.ring_cols) * p.im2col_k + kPatchSlack;
  const int64_t input_rows =
      ((p.ring_rows - 1) * a.expand_stride + 3) * ((p.ring_cols - 1) * a.expand_stride + 3) * a.cin + kPatchSlack;
  p.off_input_rows = p.off_im2col + (p.im2col_k ? round_up(patches, kLineFloats) : 0);
  p.floats = p.off_input_rows + (p.im2col_k ? round_up(input_rows, kLineFloats) : 0);
  return p;
}

// What a worker's ring holds after a run of tiles, so that its next run, when it starts where that
// one ended, continues the ring instead of computing its halo rows afresh.
struct RingState {
  int64_t end = -1;                      // the tile after the run; -1: nothing held
  int64_t n = -1, strip = -1, next = 0;  // the image and strip, and the hidden row after the last held
};

// Runs the tiles [t0, t1) of the call in order (tile index = (image * strips + strip) * bands +
// band), reusing the ring across consecutive bands, for the hidden channels of `group`. With `ring`
// (not null) the ring carries over from the worker's run before, when that one ended at t0 (the
// same scratch, then), and on to its next. scratch holds plan.floats floats. The tiles write y;
// with `channel_sums` ((N, hidden), the squeeze-and-excite's first pass) they only add up the
// depthwise output of each image and channel there, and project nothing.
using TilesFn = void (*)(const BlockArgs&, const TilePlan&, int64_t t0, int64_t t1, int64_t group, RingState* ring,
                         float* scratch, float* channel_sums);

// For a kept plan: the depthwise output of hidden channels [c0, c1) of `images` images, the plan's
// chunk of them at a time, into a.dw_store (a.dw_store_ld floats per pixel, at least the hidden
// channels rounded up to whole vectors: the last vector's lanes past them are written too). c0 is
// a whole number of vectors, and so is c1 unless it is the last channel.
using ExpandDepthwiseFn = void (*)(const BlockArgs&, const TilePlan&, int64_t images, int64_t c0, int64_t c1,
                                   float* scratch);

// The projection of the kept depthwise output (a.dw_store) for output pixels [p0, p1) (pixel
// index = (n * OH + r) * OW + q) into output channels [j0, j1) of y, with the bias and the
// residual. The squeeze-and-excite's second pass gates it with the image's gate (a.gate; [p0, p1)
// in one image), where `into` says: into the rows in place, into a copy of the rows at `copy`
// ((p1 - p0) x hidden floats: for items that share their rows), or into columns [j0, j1) of a copy
// of the projection's weight at `copy` (as many floats as the weight); kNone: no gate.
enum class GateInto { kNone, kRows, kRowsCopy, kWeightCopy };
using ProjectKeptFn = void (*)(const BlockArgs&, int64_t p0, int64_t p1, int64_t j0, int64_t j1, GateInto into,
                               float* copy);

// y[n, o] = mean over pixels of relu6(b[o] + sum_c x[n, c, pixel] w[c, o]) for the pixels of
// images [n0, n1): the network's last 1x1 convolution with its global average pool, so the wide
// tensor between them never exists. w is (cin, cout) row-major, or packed (w_packed: groups of
// kPackedColumns output channels, each (cin, kPackedColumns) contiguous, one after another); x has
// any strides; y is (N, cout) contiguous.
// Regions of memory a head call prefetches as it runs (PoolArgs::warm, Gemm::warm).
constexpr int kWarmRegions = 2;

struct PoolArgs {
  const float* x;
  int64_t sxn, sxc, sxh, sxw;
  const float* w;
  bool w_packed;
  const float* b;
  float* y;
  int64_t cin, cout, h, wd;
  // What the caller reads next (the next column block's weight, the classifier's), which the
  // micro-tiles prefetch as they run (Gemm::warm).
  const char* warm[kWarmRegions] = {};
  int64_t warm_bytes[kWarmRegions] = {};
};
// Images [n0, n1), output channels [j0, j1).
using PoolFn = void (*)(const PoolArgs&, int64_t n0, int64_t n1, int64_t j0, int64_t j1);

// y[n, o] = act(b[o] + sum_k x[n, k] w[k, o]) for rows [n0, n1) and columns [j0, j1): the
// classifier, the squeeze-and-excite's two layers.
// w is (K, O) row-major or packed as in PoolArgs; x has any strides; y is (N, O) contiguous.
struct LinearArgs {
  const float* x;
  int64_t sxn, sxk;
  const float* w;
  bool w_packed;
  const float* b;
  float* y;
  int64_t k, o;
  Act act = Act::kNone;  // applied before the store (the squeeze-and-excite's layers)
};
using LinearFn = void (*)(const LinearArgs&, int64_t n0, int64_t n1, int64_t j0, int64_t j1);

// Output rows [r0, r1) of image n of a 3x3 convolution with padding 1 (mnv2_fused::conv3x3), all
// columns, from a.x (a.cin channels, a.h x a.w, stride a.expand_stride) into a.y: weights
// a.w_expand ((9 Cin, Cout) packed, rows [dy][dx][c]), bias a.b_expand, a.hidden output channels,
// a.hw output columns, then a.act. `scratch` holds conv3x3_scratch_floats(a.hw, a.expand_stride,
// a.cin) floats.
using Conv3x3RowsFn = void (*)(const BlockArgs&, int64_t n, int64_t r0, int64_t r1, float* scratch);

// Pixels whose patches go through one GEMM call: up to a row block, the patches within ~64 KiB.
inline int64_t conv3x3_block_pixels(int64_t k) { return std::clamp<int64_t>(16384 / k, 16, kRowBlock); }
// Three input rows for `cols` output columns, and a block of patches, each followed by the slack
// that whole-vector patch copies read and write past them (conv3x3_patch).
inline int64_t conv3x3_scratch_floats(int64_t cols, int64_t stride, int64_t cin) {
  return 3 * ((cols - 1) * stride + 3) * cin + kPatchSlack + conv3x3_block_pixels(9 * cin) * 9 * cin + kPatchSlack;
}

#define MNV2_DECLARE_ISA(isa)                                                      \
  void run_tiles_##isa(const BlockArgs&, const TilePlan&, int64_t, int64_t, int64_t, RingState*, float*, float*); \
  void expand_depthwise_##isa(const BlockArgs&, const TilePlan&, int64_t, int64_t, int64_t, float*);        \
  void project_kept_##isa(const BlockArgs&, int64_t, int64_t, int64_t, int64_t, GateInto, float*); \
  void pointwise_pool_##isa(const PoolArgs&, int64_t, int64_t, int64_t, int64_t);  \
  void linear_##isa(const LinearArgs&, int64_t, int64_t, int64_t, int64_t);        \
  void conv3x3_rows_##isa(const BlockArgs&, int64_t, int64_t, int64_t, float*);    \
  int64_t lanes_##isa();                                                           \
  int64_t max_acc_##isa();
MNV2_DECLARE_ISA(avx512)
MNV2_DECLARE_ISA(avx2)
MNV2_DECLARE_ISA(generic)
#undef MNV2_DECLARE_ISA

}  // namespace cpu
}  // namespace mnv2_fused
