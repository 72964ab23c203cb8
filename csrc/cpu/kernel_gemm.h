// GEMM micro-kernels of the CPU kernel, compiled once per instruction set (included by
// tile_kernel_impl.h, after the instruction set's vector primitives).
#pragma once
#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernel_act.h"

namespace mnv2_fused {
namespace cpu {
namespace {

inline vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

// Where masked stores cost more than plain ones (AVX2's vmaskmovps: on Zen 3 the micro-tile stalled
// after each one), vectors that lie wholly inside the matrix are loaded and stored plainly, the
// last vector of a micro-tile included (Tail::kWhole). With a mask on every row's last vector,
// MobileNetV2's stem and blocks 1-8 ran 1.04-1.20x slower on AVX2 (Zen 3, 2 threads; the later
// blocks and the head, which stores one pooled row per tile, up to 1.08x), all its stages 1.07x,
// the whole network 1.05-1.09x at batch 1 and 1.02-1.08x at batch 8 (two runs).
#ifdef MNV2_ISA_CHEAP_MASKS
constexpr bool kWholeTails = false;
#else
constexpr bool kWholeTails = true;
#endif

#ifdef MNV2_ISA_HALF
constexpr bool kHalfVectors = true;
#else
// No half vectors: micro_full's kHalf is never instantiated; these keep its code well-formed.
constexpr bool kHalfVectors = false;
using hvec = vec;
using HMask = Mask;
inline HMask make_hmask(int n) { return make_mask(n); }
inline hvec low_half(vec v) { return v; }
inline hvec hload(const float* p) { return load(p); }
inline hvec hload_m(const float* p, HMask m) { return load_m(p, m); }
inline void hstore_m(float* p, hvec v, HMask m) { store_m(p, v, m); }
inline hvec hrelu6(hvec v) { return relu6(v); }
#endif

// ---------------------------------------------------------------------------------------------
// GEMM: C[i, j] = epilogue(init[i, j] + sum_k A[i, k] B[k, j]). Rows are addressed through
// pointer arrays, so A can be the input tensor itself (any strides), the ring, or a patch buffer,
// and C can be the ring, the accumulator or the output tensor.

enum class Store { kAct, kPlain, kPool };

struct Gemm {
  int64_t K = 0;
  const float* B = nullptr;  // row k at B + k * ldb; columns are output channels
  int64_t ldb = 0;           // packed B: kPackedColumns
  const float* const* a = nullptr;  // element k of row i at a[i][k * ak]
  int64_t ak = 1;
  // When not 0, A's rows are three runs of K / 3 floats, a_seg floats apart (a 3x3 convolution's
  // patches read in place from its input rows); every panel then runs whole micro-tiles only
  // (segmented_rows).
  int64_t a_seg = 0;
  const float* const* init = nullptr;  // rows the sums start from (accumulating a chunk), or null: the bias
  const float* bias = nullptr;
  float* const* c = nullptr;  // element j of row i at c[i][j * ck]
  int64_t ck = 1;
  const float* const* res = nullptr;  // added before the store when not null; element j at res[i][j * rk]
  int64_t rk = 1;
  Store store = Store::kPlain;
  Act act = Act::kNone;   // kAct: the activation applied before the store
  float* pool = nullptr;  // kPool: relu6 of each row is summed into pool[j]
  // Packed B when not 0: columns in groups of kPackedColumns, group g at B + g * group_stride, and
  // the GEMM's column j is B's column b_col0 + j.
  int64_t group_stride = 0;
  int64_t b_col0 = 0;
  // kPool: memory the caller reads next, bytes [warm[r], warm[r] + warm_bytes[r]) of the regions r
  // in turn (null: none), prefetched kWarmLines cache lines per k-step, each micro-tile its
  // own K * kWarmLines lines. The head is compute-bound, but its first tiles of each column block
  // read the block's weight from memory, and the classifier after it its 5 MB weight (MobileNetV2);
  // the head's calls prefetch their next block's weight and a slice of the classifier's.
  const char* warm[kWarmRegions] = {};
  int64_t warm_bytes[kWarmRegions] = {};
  // Otherwise (not kPool), when not null: each micro-tile of micro_full takes K cache lines from
  // it and prefetches one per k-step (BlockArgs::warm).
  WarmCursor* cursor = nullptr;

  // B: rows [k0, k0 + k) and the columns from j0 on of a (k_total, o) weight matrix w, row-major
  // or packed (see kPackedColumns).
  void set_weights(const float* w, bool packed, int64_t k_total, int64_t k0, int64_t k, int64_t o, int64_t j0) {
    K = k;
    ldb = packed ? kPackedColumns : o;
    B = w + k0 * ldb + (packed ? 0 : j0);
    group_stride = packed ? kPackedColumns * k_total : 0;
    b_col0 = packed ? j0 : 0;
  }
};

constexpr int64_t kWarmLines = 2;

// Where the micro-tile `tile` of a kPool GEMM prefetches (its window of g.warm's regions laid end
// to end, kept inside the region it starts in) and how far it moves per k-step; past the regions,
// or without any, B's column `b` (already cached) over and over.
inline const char* warm_lines(const Gemm& g, int64_t tile, const float* b, int64_t& step) {
  const int64_t bytes = g.K * kWarmLines * 64;
  int64_t offset = tile * bytes;
  for (int r = 0; r < kWarmRegions; ++r) {
    if (offset < g.warm_bytes[r]) {
      step = g.warm_bytes[r] >= bytes ? kWarmLines * 64 : 0;
      return g.warm[r] + (step ? std::min(offset, g.warm_bytes[r] - bytes) : 0);
    }
    offset -= g.warm_bytes[r];
  }
  step = 0;
  return reinterpret_cast<const char*>(b);
}

// Where column `col` of B starts (row 0); rows follow every g.ldb floats.
inline const float* b_column(const Gemm& g, int64_t col) {
  if (!g.group_stride) return g.B + col;
  col += g.b_col0;
  return g.B + col / kPackedColumns * g.group_stride + col % kPackedColumns;
}

// Rows [i0, i0 + m) (m <= MR) times columns [j0, j0 + ncols) (ncols in ((NV-1) L, NV L]).
// Rows past m repeat the last valid row (never reading outside A) and are not stored.
// Whole-vector loads of B: a tail vector reads past its row into the next ones (discarded lanes),
// which stays inside B except on its last `masked` rows (counted by panel()); those load the tail
// masked, after the main loop (a masked load inside it would make the compiler keep the
// accumulators in memory).
template <int NV, int MR, bool kPacked>
void micro(const Gemm& g, int64_t i0, int m, int64_t j0, int ncols, int64_t masked) {
  const Mask tail = make_mask(ncols - (NV - 1) * kLanes);
  // Plain conditionals, not std::min: its reference result made GCC build every row index on the
  // stack, which with K = 16 cost a third of the tile's time.
  const float* ap[MR];
  const float* start[MR];  // where each row's sums start: its init row or the bias
  for (int i = 0; i < MR; ++i) {
    const int64_t row = i0 + (i < m ? i : m - 1);
    ap[i] = g.a[row];
    start[i] = (g.init ? g.init[row] : g.bias) + j0;
  }
  vec acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j)
      acc[i][j] = j < NV - 1 ? load(start[i] + j * kLanes) : load_m(start[i] + j * kLanes, tail);
  const float* brow = g.B + j0;
  const int64_t K = g.K, ldb = g.ldb, ak = g.ak;
  auto step = [&](const vec* b, int64_t k) {
    for (int i = 0; i < MR; ++i) {
      const vec av = splat(ap[i][k * ak]);
      for (int j = 0; j < NV; ++j) acc[i][j] += av * b[j];
    }
  };
  if constexpr (kPacked) {  // every vector inside its zero-padded group: no masks
    const float* bp[NV];
    for (int j = 0; j < NV; ++j) bp[j] = b_column(g, j0 + j * kLanes);
    for (int64_t k = 0; k < K; ++k) {
      vec b[NV];
      for (int j = 0; j < NV; ++j) b[j] = load(bp[j] + k * kPackedColumns);
      step(b, k);
    }
  } else {
    int64_t k = 0;
    for (; k < K - masked; ++k, brow += ldb) {
      vec b[NV];
      for (int j = 0; j < NV; ++j) b[j] = load(brow + j * kLanes);
      step(b, k);
    }
    for (; k < K; ++k, brow += ldb) {
      vec b[NV];
      for (int j = 0; j < NV - 1; ++j) b[j] = load(brow + j * kLanes);
      b[NV - 1] = load_m(brow + (NV - 1) * kLanes, tail);
      step(b, k);
    }
  }

  if (g.store == Store::kPool) {
    vec sum[NV];
    for (int j = 0; j < NV; ++j) sum[j] = splat(0.f);
    for (int i = 0; i < MR; ++i) {  // compile-time bounds keep acc in registers
      if (i >= m) break;
      for (int j = 0; j < NV; ++j) sum[j] += relu6(acc[i][j]);
    }
    for (int j = 0; j < NV; ++j) {
      float* p = g.pool + j0 + j * kLanes;
      if (j < NV - 1) store(p, load(p) + sum[j]);
      else store_m(p, load_m(p, tail) + sum[j], tail);
    }
    return;
  }
  const bool vector_io = g.ck == 1 && (!g.res || g.rk == 1);
  for (int i = 0; i < MR; ++i) {
    if (i >= m) break;
    float* crow = g.c[i0 + i] + j0 * g.ck;
    const float* rrow = g.res ? g.res[i0 + i] + j0 * g.rk : nullptr;
    for (int j = 0; j < NV; ++j) {
      vec v = acc[i][j];
      if (g.store == Store::kAct) v = activate(v, g.act);
      const int lanes = j < NV - 1 ? kLanes : ncols - (NV - 1) * kLanes;
      if (vector_io) {
        const bool plain = j < NV - 1 || (kWholeTails && lanes == kLanes);  // see kWholeTails
        if (rrow) v += plain ? load(rrow + j * kLanes) : load_m(rrow + j * kLanes, tail);
        if (plain) store(crow + j * kLanes, v);
        else store_m(crow + j * kLanes, v, tail);
      } else {  // NCHW output or input: one element at a time
        float lane[kLanes];
        store(lane, v);
        for (int l = 0; l < lanes; ++l) {
          const int64_t col = j * kLanes + l;
          crow[col * g.ck] = lane[l] + (rrow ? rrow[col * g.rk] : 0.f);
        }
      }
    }
  }
}

// The last of a micro-tile's vectors: kMasked, loaded and stored masked to the matrix's columns;
// kWhole, inside the matrix (kWholeTails), plain loads and stores; kHalf, see micro_full.
enum class Tail { kMasked, kWhole, kHalf };

// micro() for the common case: all MR rows valid, packed B (no masked rows), a store with
// activation A (a constant) into rows of contiguous columns, with a residual of contiguous columns
// when kRes, the sums starting from init's rows when kInit, else from the bias; or, when kPool,
// the rows' relu6 summed into g.pool (the head). Straight-line code from the first load to the
// last store lets the compiler keep the accumulators in registers throughout; the general micro()
// spills them around its branches (~10% of a tile at K ~ 100), and so did a switch on the
// activation inside this function: every accumulator stored to the stack before the k-loop and
// read back after it (at K = 16-32 a fifth of the tile's time).
//
// kHalf (instruction sets with half vectors, activations none and ReLU6, neither kPool nor kSeg):
// the last vector's columns end in its first half, and it is computed as a half vector.
// MobileNetV2's projections to 24 channels (blocks 1 and 2) spent a third of their FMAs on lanes
// past the matrix; with half vectors the blocks ran 1.03-1.04x and 1.05x faster at batch 1 and 8
// (Zen 4), outputs bitwise the same.
//
// bcols: where each of the tile's NV column vectors starts in B (row 0), the same for every tile
// of a panel (full_tiles works them out once).
template <int NV, int MR, bool kRes, Act A, bool kInit, bool kPool = false, bool kSeg = false,
          Tail kTail = Tail::kMasked>
void micro_full(const Gemm& g, const float* const* bcols, int64_t i0, int64_t j0, int ncols, int64_t tile = 0) {
  constexpr bool kHalf = kTail == Tail::kHalf;
  static_assert(!kHalf || (!kPool && !kSeg && (A == Act::kNone || A == Act::kReLU6)), "half tails: see above");
  static_assert(kTail != Tail::kWhole || !kPool, "the pool's tail stays masked");
  constexpr int NF = kHalf ? NV - 1 : NV;  // whole vectors
  constexpr int NU = kTail == Tail::kWhole ? NV : NV - 1;  // vectors loaded and stored unmasked
  const Mask tail = make_mask(kHalf ? kLanes : ncols - (NV - 1) * kLanes);
  const HMask htail = make_hmask(kHalf ? ncols - NF * kLanes : 1);
  const float* ap[MR];
  const float* start[MR];  // kInit: where each row's sums start
  for (int i = 0; i < MR; ++i) {
    ap[i] = g.a[i0 + i];
    if constexpr (kInit) start[i] = g.init[i0 + i] + j0;
  }
  const float* bp[NV];
  for (int j = 0; j < NV; ++j) bp[j] = bcols[j];
  const int64_t K = g.K;
  // The accumulators are loaded only after every pointer is chosen: with a branch between their
  // loads and the k-loop, GCC kept them on the stack.
  vec acc[MR][NV];
  hvec hacc[MR];  // kHalf: the last vector
  if constexpr (kInit) {
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NF; ++j)
        acc[i][j] = j < NU ? load(start[i] + j * kLanes) : load_m(start[i] + j * kLanes, tail);
      if constexpr (kHalf) hacc[i] = hload_m(start[i] + NF * kLanes, htail);
    }
  } else {  // every row starts from the bias: loaded once, copied (1-2.6% on MobileNetV2's blocks)
    for (int j = 0; j < NF; ++j)
      acc[0][j] = j < NU ? load(g.bias + j0 + j * kLanes) : load_m(g.bias + j0 + j * kLanes, tail);
    if constexpr (kHalf) hacc[0] = hload_m(g.bias + j0 + NF * kLanes, htail);
    for (int i = 1; i < MR; ++i) {
      for (int j = 0; j < NF; ++j) acc[i][j] = acc[0][j];
      if constexpr (kHalf) hacc[i] = hacc[0];
    }
  }
  // K >= 1 and A's rows contiguous, or in three runs (panel()'s full_ok and segmented_rows check
  // them): one version of the loop, entered unconditionally.
  if constexpr (kSeg) {  // A's three runs (Gemm::a_seg), B's rows in order
    const int64_t run = K / 3, seg = g.a_seg;
    int64_t at = 0;  // where tap k sits in every row: one offset, not MR pointers moved per run
    int64_t k = 0;
    for (int s = 0; s < 3; ++s, at += seg - run) {
      const int64_t k_end = k + run;
      do {
        vec b[NV];
        for (int j = 0; j < NV; ++j) b[j] = load(bp[j] + k * kPackedColumns);
        for (int i = 0; i < MR; ++i) {
          const vec av = splat(ap[i][at]);
          for (int j = 0; j < NV; ++j) acc[i][j] += av * b[j];
        }
        ++at;
      } while (++k < k_end);
    }
  } else {
    auto step = [&](int64_t k) __attribute__((always_inline)) {
      vec b[NV];
      for (int j = 0; j < NF; ++j) b[j] = load(bp[j] + k * kPackedColumns);
      hvec hb{};  // kHalf: the first 8 of the last group's 16 columns
      if constexpr (kHalf) hb = hload(bp[NF] + k * kPackedColumns);
      for (int i = 0; i < MR; ++i) {
        const vec av = splat(ap[i][k]);
        for (int j = 0; j < NF; ++j) acc[i][j] += av * b[j];
        if constexpr (kHalf) hacc[i] += low_half(av) * hb;
      }
    };
    int64_t k = 0;
    if constexpr (kPool) {
      int64_t warm_step = 0;
      const char* const warm = warm_lines(g, tile, bp[0], warm_step);
      do {
        for (int l = 0; l < kWarmLines; ++l) __builtin_prefetch(warm + k * warm_step + l * 64, 0, 2);
        step(k);
      } while (++k < K);
    } else if (const char* const warm = take_warm(g.cursor, K * 64)) {
      // One line per k-step: two per step (on a 2-core Xeon) made a batch-1 forward 1.03x slower
      // than one, their traffic holding up the tile's own loads.
      do {
        __builtin_prefetch(warm + k * 64, 0, 2);
        step(k);
      } while (++k < K);
    } else {
      do step(k);
      while (++k < K);
    }
  }
  // Summed row by row as micro() sums them, from the first row rather than from zero (the same
  // sums): a zero constant, hoisted out of the loop over tiles, held a register through the k-loop
  // (see tile_relu6).
  if constexpr (kPool) {
    for (int j = 0; j < NV; ++j) {
      vec sum = tile_relu6(acc[0][j]);
      for (int i = 1; i < MR; ++i) sum += tile_relu6(acc[i][j]);
      float* p = g.pool + j0 + j * kLanes;
      if (j < NV - 1) store(p, load(p) + sum);
      else store_m(p, load_m(p, tail) + sum, tail);
    }
    return;
  }
  // Every row's pointers read before the first store: the stores (memcpy) may alias g and its
  // pointer arrays, and GCC reloaded g.c and g.res for each row after the previous row's stores
  // (MobileNetV2's stem with its first block: 1.02-1.04x faster).
  float* cp[MR];
  const float* rp[MR];
  for (int i = 0; i < MR; ++i) {
    cp[i] = g.c[i0 + i] + j0;
    if constexpr (kRes) rp[i] = g.res[i0 + i] + j0;
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NF; ++j) {
      vec v = tile_activate(acc[i][j], A);
      if constexpr (kRes) v += j < NU ? load(rp[i] + j * kLanes) : load_m(rp[i] + j * kLanes, tail);
      if (j < NU) store(cp[i] + j * kLanes, v);
      else store_m(cp[i] + j * kLanes, v, tail);
    }
    if constexpr (kHalf) {
      hvec v = A == Act::kReLU6 ? hrelu6(hacc[i]) : hacc[i];
      if constexpr (kRes) v += hload_m(rp[i] + NF * kLanes, htail);
      hstore_m(cp[i] + NF * kLanes, v, htail);
    }
  }
}

// One micro-tile of a plain or residual store, out of line: inlined into full_tiles' loop over the
// tiles (as GCC did with the 5-row tiles), its row and column pointers competed with the loop's own
// for the general registers, and B's column pointers went through vector registers at every k-step
// (MobileNetV2 at batch 8: block 16 0.964-0.965x the time, the forward 0.993-0.998x; batch 1 level).
template <int NV, int MR, bool kRes, Act A, bool kInit, Tail T>
__attribute__((noinline)) void micro_tile(const Gemm& g, const float* const* bcols, int64_t i0, int64_t j0,
                                          int ncols) {
  micro_full<NV, MR, kRes, A, kInit, false, false, T>(g, bcols, i0, j0, ncols);
}

// Rows [first, first + MR * ((M - first) / MR)) of a panel with micro_full, the activation
// dispatched once for all of them; returns the first row left, `first` where micro_full does not
// apply.
template <int NV, int MR>
int64_t full_tiles(const Gemm& g, int64_t first, int64_t M, int64_t j0, int ncols, int64_t tile0 = -1) {
  // Each loop over the tiles counts in a local and sets `done` after it: counting in `done`, which
  // the lambdas take by reference, GCC stored the count after every tile.
  const int64_t end = first + (M - first) / MR * MR;
  int64_t done = first;
  // Where each of the panel's column vectors starts in B, worked out once for all its tiles.
  const float* bcols[NV];
  for (int j = 0; j < NV; ++j) bcols[j] = b_column(g, j0 + j * kLanes);
  // A half-vector tail where the instruction set has them and the activation allows (micro_full);
  // a whole one where masked stores are slow.
  const bool half = kHalfVectors && ncols - (NV - 1) * kLanes <= kLanes / 2;
  const bool whole = kWholeTails && ncols == NV * kLanes;
  using Masked = std::integral_constant<Tail, Tail::kMasked>;
  using Whole = std::integral_constant<Tail, Tail::kWhole>;
  auto run = [&](auto act, auto res) {
    constexpr Act A = decltype(act)::value;
    constexpr bool R = decltype(res)::value;
    auto tiles = [&](auto tail) {
      constexpr Tail T = decltype(tail)::value;
      if (g.init)
        for (int64_t i = first; i < end; i += MR) micro_tile<NV, MR, R, A, true, T>(g, bcols, i, j0, ncols);
      else
        for (int64_t i = first; i < end; i += MR) micro_tile<NV, MR, R, A, false, T>(g, bcols, i, j0, ncols);
      done = end;
    };
    if constexpr (kHalfVectors && (A == Act::kNone || A == Act::kReLU6))
      if (half) return tiles(std::integral_constant<Tail, Tail::kHalf>{});
    if constexpr (kWholeTails)
      if (whole) return tiles(Whole{});
    tiles(Masked{});
  };
  using None = std::integral_constant<Act, Act::kNone>;
  if (g.store == Store::kPool) {  // the head: from the bias (panel()'s full_ok)
    const int64_t t0 = tile0 < 0 ? first / MR : tile0;
    for (int64_t i = first; i < end; i += MR)
      micro_full<NV, MR, false, Act::kNone, false, true>(g, bcols, i, j0, ncols, t0 + (i - first) / MR);
    return end;
  }
  const Act act = g.store == Store::kAct ? g.act : Act::kNone;
  if (g.a_seg) {  // a 3x3 convolution's patches in place: from the bias, with a plain store
    auto seg = [&](auto a) {
      constexpr Act A = decltype(a)::value;
      auto tiles = [&](auto tail) {
        constexpr Tail T = decltype(tail)::value;
        for (int64_t i = first; i < end; i += MR)
          micro_full<NV, MR, false, A, false, false, true, T>(g, bcols, i, j0, ncols);
        done = end;
      };
      if constexpr (kWholeTails)
        if (whole) return tiles(Whole{});
      tiles(Masked{});
    };
    switch (act) {  // gemm() applies the costly ones after a plain store
      case Act::kNone: seg(None{}); break;
      case Act::kReLU: seg(std::integral_constant<Act, Act::kReLU>{}); break;
      case Act::kReLU6: seg(std::integral_constant<Act, Act::kReLU6>{}); break;
      case Act::kHardswish: seg(std::integral_constant<Act, Act::kHardswish>{}); break;
      default: seg(std::integral_constant<Act, Act::kHardsigmoid>{}); break;
    }
    return done;
  }
  if (g.res) {  // a projection's residual comes with a plain store
    if (act == Act::kNone) run(None{}, std::true_type{});
    return done;
  }
  switch (act) {  // the costly activations are applied in a pass of their own (gemm())
    case Act::kNone: run(None{}, std::false_type{}); break;
    case Act::kReLU: run(std::integral_constant<Act, Act::kReLU>{}, std::false_type{}); break;
    case Act::kReLU6: run(std::integral_constant<Act, Act::kReLU6>{}, std::false_type{}); break;
    case Act::kHardswish: run(std::integral_constant<Act, Act::kHardswish>{}, std::false_type{}); break;
    case Act::kHardsigmoid: run(std::integral_constant<Act, Act::kHardsigmoid>{}, std::false_type{}); break;
    default: break;
  }
  return done;
}

// Every row of one column panel, in micro-tiles of MR rows (the last ones MR - 1 where
// shorter_tiles allows), then MR/2 and MR/4 for the remainder.
template <int NV, bool kPacked>
void panel(const Gemm& g, int64_t M, int64_t j0, int ncols) {
  constexpr int MR1 = static_cast<int>(tile_rows(NV, kMaxAcc)), MR2 = (MR1 + 1) / 2, MR3 = (MR1 + 3) / 4;
  // B's last rows that a whole tail vector would read past (see micro).
  const int64_t masked = std::min<int64_t>(g.K, (NV * kLanes + g.ldb - 1) / std::max<int64_t>(g.ldb, 1));
  const bool full_ok = kPacked && g.K > 0 && g.ak == 1 &&
                       (g.store == Store::kPool ? !g.init && !g.res : g.ck == 1 && (!g.res || g.rk == 1));
  // The rows past whole tiles go in tiles one row shorter where there are enough rows
  // (shorter_tiles), not in a tile of one or a few rows, whose loads of B feed as few FMAs.
  constexpr int MR0 = MR1 - 1;
  int64_t i = 0;
  if (full_ok && M >= MR1) {
    if constexpr (MR0 >= 2) {
      const int64_t split = M - shorter_tiles(M, MR1) * MR0;
      if (split < M) {
        i = full_tiles<NV, MR1>(g, 0, split, j0, ncols);
        if (i == split) i = full_tiles<NV, MR0>(g, i, M, j0, ncols, split / MR1);
      }
    }
    if (i == 0) i = full_tiles<NV, MR1>(g, 0, M, j0, ncols);
  }
  if (g.a_seg) return;  // whole micro-tiles only (segmented_rows)
  // The rows past whole micro-tiles in shorter ones of the same kernel: micro() below computes
  // MR rows for fewer (repeating the last) with its accumulators spilled around its branches.
  if (full_ok && i < M) {
    if constexpr (MR2 < MR1) i = full_tiles<NV, MR2>(g, i, M, j0, ncols);
    if constexpr (MR3 < MR2) i = full_tiles<NV, MR3>(g, i, M, j0, ncols);
    if constexpr (1 < MR3) i = full_tiles<NV, 1>(g, i, M, j0, ncols);
  }
  while (i < M) {
    const int64_t rem = M - i;
    if (rem > MR2) {
      micro<NV, MR1, kPacked>(g, i, static_cast<int>(std::min<int64_t>(rem, MR1)), j0, ncols, masked);
      i += MR1;
    } else if (rem > MR3) {
      micro<NV, MR2, kPacked>(g, i, static_cast<int>(rem), j0, ncols, masked);
      i += MR2;
    } else {
      micro<NV, MR3, kPacked>(g, i, static_cast<int>(rem), j0, ncols, masked);
      i += MR3;
    }
  }
}

// GEMMs with K = 16 (the expands of blocks with 16 input channels) or 27 (a stem's 3 x 3 taps of 3
// channels, one output vector): one column vector at a time, B's K rows held in registers, the
// rows of A streamed R at a time; a row costs K FMAs, the activation and a store, with no
// accumulators to load and store per micro-tile. Measured against micro_full: 1.3x at K = 16 with
// 16 columns, level to 0.95x with more (MobileNetV2's 16 -> 96 expand: 1.04x at batch 1, 0.95x at
// batch 8); at K = 27 level with 16 columns, but with 4 rows in flight (27 of the 32 registers
// hold B) only half the FMA rate: with 32 columns micro-tiles are 1.3x faster (the stem of
// MobileNetV2 1.06-1.11x). At K = 24 and 32 micro-tiles win (B's rows leave room for 4 rows in
// flight, or are reloaded every R rows): MobileNetV2's K = 24 and 32 expands ran 1.05-1.22x
// faster on micro_full. The activation is a template argument: a switch on it per row cost
// 15-25% at K = 16. kTail: the column vector is the matrix's last, partly outside it, so its
// loads and stores are masked; whole vectors go unmasked (masked, 4-7% slower). kUnitK: A's rows
// are contiguous (Gemm::ak = 1, a channels-last input), known at compile time, so each tap is a
// displacement off its row's pointer; with ak read at run time GCC computed every tap's address
// with an lea and spilled row pointers to vector registers (MobileNetV2's block 1: 0.984x the
// time at batch 8, 0.993-0.995x at batch 1).
template <int K, Act A, bool kRes, bool kTail, bool kUnitK = false>
void column_short_k(const Gemm& g, int64_t M, int64_t j0, int ncols) {
  // Rows in flight, independent FMA chains that cover the FMA latency: as many as the registers
  // left beside B's hold.
  constexpr int R = K <= 16 ? 8 : 4;
  const Mask tail = make_mask(ncols);
  auto ld = [&](const float* p) { return kTail ? load_m(p, tail) : load(p); };
  const float* bcol = b_column(g, j0);
  const int64_t ak = kUnitK ? 1 : g.ak, ldb = g.ldb;
  // g's pointers in locals, and each group's output rows read before its first store: the stores
  // (memcpy) may alias g and its pointer arrays, and GCC reloaded g.c for every row after the
  // previous row's store (MobileNetV2's block 1, below: 1.05x at batch 1, 1.09x at batch 8, beside
  // the prefetch's gain).
  const float* const* const a_rows = g.a;
  const float* const* const init = g.init;
  const float* const bias = g.bias;
  float* const* const c_rows = g.c;
  const float* const* const res_rows = g.res;
  vec b[K];
  for (int k = 0; k < K; ++k) b[k] = ld(bcol + k * ldb);
  auto finish = [&](vec v, float* c, int64_t row) {
    v = activate(v, A);
    if constexpr (kRes) v += ld(res_rows[row] + j0);
    if constexpr (kTail) store_m(c + j0, v, tail);
    else store(c + j0, v);
  };
  // The first column's pass is the first to read A's rows (at K = 16 one cache line each, used for
  // only R * 16 FMAs), and stalled on them: it prefetches the rows 3 groups ahead. MobileNetV2's
  // block 1 (16 -> 96, its input read in place) ran 1.07-1.11x faster at batch 8 on a Zen 4 EPYC;
  // 1 group ahead 1.02x, 6 and 12 groups 1.06x and 1.04x.
  constexpr int64_t kAhead = 3 * R;
  const bool first_pass = j0 == 0;
  int64_t i = 0;
  for (; i + R <= M; i += R) {
    if (first_pass && i + kAhead + R <= M)
      for (int r = 0; r < R; ++r) __builtin_prefetch(a_rows[i + kAhead + r]);
    const float* ap[R];
    float* cp[R];
    vec acc[R];
    for (int r = 0; r < R; ++r) {
      ap[r] = a_rows[i + r];
      cp[r] = c_rows[i + r];
      acc[r] = ld((init ? init[i + r] : bias) + j0);
    }
#pragma GCC unroll 32
    for (int k = 0; k < K; ++k)
      for (int r = 0; r < R; ++r) acc[r] += splat(ap[r][k * ak]) * b[k];
    for (int r = 0; r < R; ++r) finish(acc[r], cp[r], i + r);
  }
  for (; i < M; ++i) {  // fewer than R rows left
    const float* ap = a_rows[i];
    vec acc = ld((init ? init[i] : bias) + j0);
    for (int k = 0; k < K; ++k) acc += splat(ap[k * ak]) * b[k];
    finish(acc, c_rows[i], i);
  }
}

// The panels' widths in vectors for N columns (panels() below), in order.
template <class F>
void for_each_panel(int64_t N, F&& f) {
  const int64_t vectors = (N + kLanes - 1) / kLanes, count = (vectors + 3) / 4;
  int64_t j0 = 0;
  for (int64_t p = 0; p < count; ++p) {
    const int64_t nv = vectors / count + (p < vectors % count ? 1 : 0);
    f(j0, nv);
    j0 += nv * kLanes;
  }
}

// Whether gemm_kernels() runs g's N columns one vector at a time (column_short_k): only where the
// registers hold B's rows beside the rows in flight (AVX-512's 32). A residual only comes with a
// plain store (a projection's), the one instantiation it gets.
inline bool column_by_column(const Gemm& g, int64_t N) {
  return kMaxAcc >= 24 && !g.a_seg && (g.K == 16 || (g.K == 27 && N <= kLanes)) &&
         (g.store == Store::kAct || g.store == Store::kPlain) && g.ck == 1 &&
         (!g.res || (g.rk == 1 && g.store == Store::kPlain));
}

// How many of g's M rows its A could be read as segmented rows (Gemm::a_seg, set by the caller
// after): whole micro-tiles of every panel, a multiple of each panel's tile height; none where
// micro-tiles do not apply (see panel()'s full_ok) or the column-by-column kernel takes the GEMM.
inline int64_t segmented_rows(const Gemm& g, int64_t M, int64_t N) {
  if (!g.group_stride || g.K % 3 != 0 || g.ak != 1 || g.ck != 1 || g.res || g.init || g.store == Store::kPool ||
      column_by_column(g, N))
    return 0;
  int64_t step = 1;
  for_each_panel(N, [&](int64_t, int64_t nv) { step = std::lcm(step, tile_rows(nv, kMaxAcc)); });
  return M - M % step;
}

// Column panels of at most four vectors, as even as possible (96 columns are 48 + 48, not 64 + 32):
// narrow panels have taller micro-tiles, whose row pointers crowd the registers. AVX2 too: GCC keeps
// three of a 3 x 4 tile's four B vectors in registers and reads the fourth in each FMA (12
// accumulators, the broadcast and three of B fill the 16 registers; the store's constants stay out
// of them, see tile_relu6), a k-loop that benchmarks/tile_shapes.cpp runs on a Zen 3 core at 63-93%
// of its FMA ceiling for K of 16-144, as fast as 4 x 3 tiles' and 6 x 2 tiles' (B in registers) or
// up to 1.1x faster (K = 16), against 49-70% with B read in every FMA. In MobileNetV2, panels of 2
// vectors made the stages 1.04x slower (stage sum, 1 thread, batch 1; GCC kept the 6 x 2 tile's
// row pointers on the stack), panels of 3 vectors 1.12x slower.
template <bool kPacked>
void panels(const Gemm& g, int64_t M, int64_t N) {
  for_each_panel(N, [&](int64_t j0, int64_t nv) {
    const int ncols = static_cast<int>(std::min<int64_t>(nv * kLanes, N - j0));
    switch (nv) {
      case 1: panel<1, kPacked>(g, M, j0, ncols); break;
      case 2: panel<2, kPacked>(g, M, j0, ncols); break;
      case 3: panel<3, kPacked>(g, M, j0, ncols); break;
      default: panel<4, kPacked>(g, M, j0, ncols); break;
    }
  });
}

// Activations that cost tens of instructions per vector (SiLU: an exp and a reciprocal). Applied
// in the GEMM's store they need registers beside the accumulators and B's rows, which then spill;
// a pass of their own over the rows just stored (still in L1) has every register free.
inline bool costly(Act act) { return act == Act::kSiLU || act == Act::kSigmoid; }

// act of the first n floats of each of `rows` rows, ld floats apart, times gate[j] when gate is
// not null. The activation is a template argument so that the loop holds its instructions alone,
// not a branch on act per vector.
template <Act A>
inline void activate_rows_as(float* base, int64_t rows, int64_t ld, int64_t n, const float* gate) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = base + i * ld;
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      vec v = activate(load(row + j), A);
      store(row + j, gate ? v * load(gate + j) : v);
    }
    if (j < n) {
      const Mask mk = make_mask(static_cast<int>(n - j));
      vec v = activate(load_m(row + j, mk), A);
      store_m(row + j, gate ? v * load_m(gate + j, mk) : v, mk);
    }
  }
}

inline void activate_rows(float* base, int64_t rows, int64_t ld, int64_t n, Act act, const float* gate) {
  with_act(act, [&](auto a) { activate_rows_as<decltype(a)::value>(base, rows, ld, n, gate); });
}

void gemm_kernels(const Gemm& g, int64_t M, int64_t N) {
  if (column_by_column(g, N)) {
    with_act(g.store == Store::kAct ? g.act : Act::kNone, [&](auto act) {
      constexpr Act A = decltype(act)::value;
      auto columns = [&](auto res) {
        constexpr bool R = decltype(res)::value;
        for (int64_t j0 = 0; j0 < N; j0 += kLanes) {
          const int ncols = static_cast<int>(std::min<int64_t>(kLanes, N - j0));
          const bool whole = ncols == kLanes;
          if (g.K == 16) {
            if (whole && g.ak == 1) column_short_k<16, A, R, false, true>(g, M, j0, ncols);
            else if (whole) column_short_k<16, A, R, false>(g, M, j0, ncols);
            else column_short_k<16, A, R, true>(g, M, j0, ncols);
          } else {
            if (whole) column_short_k<27, A, R, false>(g, M, j0, ncols);
            else column_short_k<27, A, R, true>(g, M, j0, ncols);
          }
        }
      };
      if constexpr (A == Act::kNone) {
        if (g.res) return columns(std::true_type{});
      }
      columns(std::false_type{});
    });
    return;
  }
  if (g.group_stride) panels<true>(g, M, N);
  else panels<false>(g, M, N);
}

// The GEMM with its store; a costly activation applied to the stored rows afterwards.
void gemm(const Gemm& g, int64_t M, int64_t N) {
  if (g.store == Store::kAct && costly(g.act) && g.ck == 1 && !g.res) {
    Gemm plain = g;
    plain.store = Store::kPlain;
    gemm_kernels(plain, M, N);
    for (int64_t i = 0; i < M; ++i) activate_rows(g.c[i], 1, 0, N, g.act, nullptr);
    return;
  }
  gemm_kernels(g, M, N);
}

}  // namespace
}  // namespace cpu
}  // namespace mnv2_fused
