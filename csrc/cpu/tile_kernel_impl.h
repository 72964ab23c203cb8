// The body of the CPU kernel, compiled once per instruction set. The including file, after any
// `#pragma GCC target`, defines
//   MNV2_ISA           the suffix of the exported functions (run_tiles_<isa>, ...)
//   vec, kLanes        a GCC vector of kLanes floats
//   kMaxAcc            how many vec accumulators the register file holds next to the B row
//   Mask, make_mask(n), load_m(p, mask), store_m(p, v, mask)   the first n lanes only
//   splat(s)           every lane s
//   relu6(v)           min(max(v, 0), 6), NaN kept
// and includes nothing after this file.
#include <algorithm>
#include <cstring>

#define MNV2_CAT2(a, b) a##b
#define MNV2_CAT(a, b) MNV2_CAT2(a, b)

namespace mnv2_fused {
namespace cpu {
namespace {

inline vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }

// ---------------------------------------------------------------------------------------------
// GEMM: C[i, j] = epilogue(init[i, j] + sum_k A[i, k] B[k, j]). Rows are addressed through
// pointer arrays, so A can be the input tensor itself (any strides), the ring, or a patch buffer,
// and C can be the ring, the accumulator or the output tensor.

enum class Store { kRelu6, kPlain, kPool };

struct Gemm {
  int64_t K;
  const float* B;  // row k at B + k * ldb; columns are output channels
  int64_t ldb;     // packed B: kPackedColumns
  const float* const* a;  // element k of row i at a[i][k * ak]
  int64_t ak;
  const float* const* init;  // rows the sums start from (accumulating a chunk), or null: the bias
  const float* bias;
  float* const* c;  // element j of row i at c[i][j * ck]
  int64_t ck;
  const float* const* res;  // added before the store when not null; element j at res[i][j * rk]
  int64_t rk;
  Store store;
  float* pool;  // kPool: relu6 of each row is summed into pool[j]
  // Packed B when not 0: columns in groups of kPackedColumns, group g at B + g * group_stride, and
  // the GEMM's column j is B's column b_col0 + j.
  int64_t group_stride = 0;
  int64_t b_col0 = 0;
};

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
      if (g.store == Store::kRelu6) v = relu6(v);
      const int lanes = j < NV - 1 ? kLanes : ncols - (NV - 1) * kLanes;
      if (vector_io) {
        if (rrow) v += j < NV - 1 ? load(rrow + j * kLanes) : load_m(rrow + j * kLanes, tail);
        if (j < NV - 1) store(crow + j * kLanes, v);
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

// micro() for the common case: all MR rows valid, packed B (no masked rows), a plain or ReLU6
// store into rows of contiguous columns, no residual. Straight-line code around the k-loop lets
// the compiler keep the accumulators in registers from the first load to the last store; the
// general micro() spills them around its branches, which costs ~10% of a tile at K ~ 100.
template <int NV, int MR>
void micro_full(const Gemm& g, int64_t i0, int64_t j0, int ncols) {
  const Mask tail = make_mask(ncols - (NV - 1) * kLanes);
  const float* ap[MR];
  vec acc[MR][NV];
  for (int i = 0; i < MR; ++i) {
    ap[i] = g.a[i0 + i];
    const float* start = (g.init ? g.init[i0 + i] : g.bias) + j0;
    for (int j = 0; j < NV; ++j)
      acc[i][j] = j < NV - 1 ? load(start + j * kLanes) : load_m(start + j * kLanes, tail);
  }
  const float* bp[NV];
  for (int j = 0; j < NV; ++j) bp[j] = b_column(g, j0 + j * kLanes);
  const int64_t K = g.K, ak = g.ak;
  for (int64_t k = 0; k < K; ++k) {
    vec b[NV];
    for (int j = 0; j < NV; ++j) b[j] = load(bp[j] + k * kPackedColumns);
    for (int i = 0; i < MR; ++i) {
      const vec av = splat(ap[i][k * ak]);
      for (int j = 0; j < NV; ++j) acc[i][j] += av * b[j];
    }
  }
  const bool relu = g.store == Store::kRelu6;
  for (int i = 0; i < MR; ++i) {
    float* c = g.c[i0 + i] + j0;
    for (int j = 0; j < NV; ++j) {
      const vec v = relu ? relu6(acc[i][j]) : acc[i][j];
      if (j < NV - 1) store(c + j * kLanes, v);
      else store_m(c + j * kLanes, v, tail);
    }
  }
}

// Every row of one column panel, in micro-tiles of MR rows, then MR/2 and MR/4 for the remainder.
template <int NV, bool kPacked>
void panel(const Gemm& g, int64_t M, int64_t j0, int ncols) {
  constexpr int MR1 = static_cast<int>(tile_rows(NV, kMaxAcc)), MR2 = (MR1 + 1) / 2, MR3 = (MR1 + 3) / 4;
  // B's last rows that a whole tail vector would read past (see micro).
  const int64_t masked = std::min<int64_t>(g.K, (NV * kLanes + g.ldb - 1) / std::max<int64_t>(g.ldb, 1));
  const bool full_ok = kPacked && g.ck == 1 && !g.res && g.store != Store::kPool;
  int64_t i = 0;
  while (i < M) {
    const int64_t rem = M - i;
    if (full_ok && rem >= MR1) {
      micro_full<NV, MR1>(g, i, j0, ncols);
      i += MR1;
    } else if (rem > MR2) {
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

// GEMMs with a short K (the expands of blocks with 16, 24 or 32 input channels, the stem's 27
// taps, the first block's projection): one column vector at a time, KC rows of B held in
// registers, the rows of A streamed R at a time. A micro-tile would spend about as long loading
// and storing its accumulators as multiplying (measured: 60-75% of the long-K speed at
// K = 16-32); here a row costs K FMAs, a ReLU6 and a store. K = kChunks * KC: with one chunk B is
// loaded once for all rows, with more it is reloaded chunk by chunk for every R rows.
template <int KC, int kChunks>
void column_short_k(const Gemm& g, int64_t M, int64_t j0, int ncols) {
  // Rows in flight, independent FMA chains that cover the FMA latency: as many as the registers
  // left beside B's hold.
  constexpr int R = KC <= 16 ? 8 : 4;
  const Mask tail = make_mask(ncols);
  const float* bcol = b_column(g, j0);
  const int64_t ak = g.ak, ldb = g.ldb;
  vec b[KC];
  auto load_b = [&](int chunk) {
    for (int k = 0; k < KC; ++k) b[k] = load_m(bcol + (chunk * KC + k) * ldb, tail);
  };
  auto finish = [&](vec v, int64_t row) {
    if (g.store == Store::kRelu6) v = relu6(v);
    store_m(g.c[row] + j0, v, tail);
  };
  if constexpr (kChunks == 1) load_b(0);
  int64_t i = 0;
  for (; i + R <= M; i += R) {
    const float* ap[R];
    vec acc[R];
    for (int r = 0; r < R; ++r) {
      ap[r] = g.a[i + r];
      acc[r] = load_m((g.init ? g.init[i + r] : g.bias) + j0, tail);
    }
    for (int chunk = 0; chunk < kChunks; ++chunk) {
      if constexpr (kChunks > 1) load_b(chunk);
#pragma GCC unroll 32
      for (int k = 0; k < KC; ++k)
        for (int r = 0; r < R; ++r) acc[r] += splat(ap[r][(chunk * KC + k) * ak]) * b[k];
    }
    for (int r = 0; r < R; ++r) finish(acc[r], i + r);
  }
  for (; i < M; ++i) {  // fewer than R rows left
    const float* ap = g.a[i];
    vec acc = load_m((g.init ? g.init[i] : g.bias) + j0, tail);
    for (int k = 0; k < kChunks * KC; ++k)
      acc += splat(ap[k * ak]) * (kChunks == 1 ? b[k % KC] : load_m(bcol + k * ldb, tail));
    finish(acc, i);
  }
}

// Column panels of at most four vectors, as even as possible (96 columns are 48 + 48, not 64 + 32):
// narrow panels have taller micro-tiles, whose row pointers crowd the registers.
template <bool kPacked>
void panels(const Gemm& g, int64_t M, int64_t N) {
  const int64_t vectors = (N + kLanes - 1) / kLanes, count = (vectors + 3) / 4;
  int64_t j0 = 0;
  for (int64_t p = 0; p < count; ++p) {
    const int64_t nv = vectors / count + (p < vectors % count ? 1 : 0);
    const int ncols = static_cast<int>(std::min<int64_t>(nv * kLanes, N - j0));
    switch (nv) {
      case 1: panel<1, kPacked>(g, M, j0, ncols); break;
      case 2: panel<2, kPacked>(g, M, j0, ncols); break;
      case 3: panel<3, kPacked>(g, M, j0, ncols); break;
      default: panel<4, kPacked>(g, M, j0, ncols); break;
    }
    j0 += nv * kLanes;
  }
}

void gemm(const Gemm& g, int64_t M, int64_t N) {
  // Only where the registers hold B's rows beside the rows in flight (AVX-512's 32), and for K = 32
  // with enough rows: the rows past the last group of R go one at a time.
  constexpr bool short_k_fits = kMaxAcc >= 24;
  const bool short_k = (g.K == 16 || g.K == 24 || g.K == 27 || (g.K == 32 && M >= 32)) &&
                       (g.store == Store::kRelu6 || g.store == Store::kPlain) && g.ck == 1 && !g.res;
  if (short_k_fits && short_k) {
    for (int64_t j0 = 0; j0 < N; j0 += kLanes) {
      const int ncols = static_cast<int>(std::min<int64_t>(kLanes, N - j0));
      switch (g.K) {
        case 16: column_short_k<16, 1>(g, M, j0, ncols); break;
        case 24: column_short_k<24, 1>(g, M, j0, ncols); break;
        case 27: column_short_k<27, 1>(g, M, j0, ncols); break;  // the stem: 3 x 3 taps of 3 channels
        default: column_short_k<16, 2>(g, M, j0, ncols); break;
      }
    }
    return;
  }
  if (g.group_stride) panels<true>(g, M, N);
  else panels<false>(g, M, N);
}

// ---------------------------------------------------------------------------------------------
// One band of one strip.

struct Band {
  int64_t n, r0, rows, q0, cols;  // output rows [r0, r0 + rows), columns [q0, q0 + cols) of image n
  int64_t hr0, hc0;               // first hidden row / column the band reads (may be padding)
};

inline int64_t ring_slot(int64_t hr, int64_t ring_rows) { return ((hr % ring_rows) + ring_rows) % ring_rows; }

// 3x3 input patches ([c][dy][dx], zeros outside the input) of the hidden pixels [jlo, jhi) of ring
// row hr, one after another in dst. The three taps of a row are neighbours in the input, so each
// patch is written front to back.
void im2col_row(const BlockArgs& a, const Band& b, int64_t hr, int64_t jlo, int64_t jhi, float* dst) {
  const int64_t K = 9 * a.cin, es = a.expand_stride;
  // Pixels whose three columns all fall inside the input: no checks for them.
  int64_t in_lo = jlo, in_hi = jhi;
  while (in_lo < in_hi && (b.hc0 + in_lo) * es - 1 < 0) ++in_lo;
  while (in_hi > in_lo && (b.hc0 + in_hi - 1) * es + 1 >= a.w) --in_hi;
  for (int64_t c = 0; c < a.cin; ++c) {
    for (int64_t dy = 0; dy < 3; ++dy) {
      const int64_t ih = hr * es - 1 + dy;
      float* d = dst + (c * 3 + dy) * 3;
      if (ih < 0 || ih >= a.h) {
        for (int64_t j = jlo; j < jhi; ++j) d[(j - jlo) * K] = d[(j - jlo) * K + 1] = d[(j - jlo) * K + 2] = 0.f;
        continue;
      }
      const float* row = a.x + b.n * a.sxn + c * a.sxc + ih * a.sxh;
      auto tap = [&](int64_t iw) { return iw >= 0 && iw < a.w ? row[iw * a.sxw] : 0.f; };
      for (int64_t j = jlo; j < jhi; ++j) {
        float* p = d + (j - jlo) * K;
        const int64_t iw = (b.hc0 + j) * es - 1;
        if (j >= in_lo && j < in_hi) {
          const float* s = row + iw * a.sxw;
          p[0] = s[0], p[1] = s[a.sxw], p[2] = s[2 * a.sxw];
        } else {
          p[0] = tap(iw), p[1] = tap(iw + 1), p[2] = tap(iw + 2);
        }
      }
    }
  }
}

// Fills the ring rows [hr_begin, hr_end) with hidden channels [c0, c0 + hc), for the band's columns.
void fill_hidden_rows(const BlockArgs& a, const TilePlan& p, const Band& b, int64_t hr_begin, int64_t hr_end,
                      int64_t c0, int64_t hc, float* ring, float* im2col) {
  const int64_t row_floats = p.ring_cols * p.ld;
  const int64_t ncols = (b.cols - 1) * a.stride + 3;
  // Columns of the ring inside the hidden image.
  const int64_t jlo = std::max<int64_t>(0, -b.hc0), jhi = std::min(ncols, a.hw - b.hc0);
  const float* a_rows[kRowBlock];
  float* c_rows[kRowBlock];
  int64_t pending = 0;
  const int64_t K = a.expand == Expand::kConv3x3 ? 9 * a.cin : a.cin;
  auto flush = [&]() {
    if (pending == 0) return;
    const bool packed = a.expand_packed;
    Gemm g{K,       packed ? a.w_expand : a.w_expand + c0, packed ? kPackedColumns : a.hidden, a_rows,
           a.expand == Expand::kConv3x3 ? 1 : a.sxc, nullptr, a.b_expand + c0, c_rows, 1, nullptr, 0,
           Store::kRelu6, nullptr, packed ? kPackedColumns * K : 0, c0};
    gemm(g, pending, hc);
    pending = 0;
  };
  for (int64_t hr = hr_begin; hr < hr_end; ++hr) {
    float* row = ring + ring_slot(hr, p.ring_rows) * row_floats;
    if (hr < 0 || hr >= a.hh || jlo >= jhi) {  // the depthwise's zero padding
      std::memset(row, 0, sizeof(float) * row_floats);
      continue;
    }
    if (jlo > 0) std::memset(row, 0, sizeof(float) * jlo * p.ld);
    if (jhi < ncols) std::memset(row + jhi * p.ld, 0, sizeof(float) * (ncols - jhi) * p.ld);
    if (a.expand == Expand::kConv3x3) {
      for (int64_t j0 = jlo; j0 < jhi; j0 += kRowBlock) {
        const int64_t j1 = std::min(jhi, j0 + kRowBlock);
        if (pending + (j1 - j0) > kRowBlock) flush();
        im2col_row(a, b, hr, j0, j1, im2col + pending * K);
        for (int64_t j = j0; j < j1; ++j, ++pending) {
          a_rows[pending] = im2col + pending * K;
          c_rows[pending] = row + j * p.ld;
        }
      }
      continue;
    }
    for (int64_t j = jlo; j < jhi; ++j) {
      const int64_t hcol = b.hc0 + j;
      float* dst = row + j * p.ld;
      if (a.expand == Expand::kNone) {
        const float* src = a.x + b.n * a.sxn + hr * a.sxh + hcol * a.sxw + c0 * a.sxc;
        if (a.sxc == 1) std::memcpy(dst, src, sizeof(float) * hc);
        else for (int64_t c = 0; c < hc; ++c) dst[c] = src[c * a.sxc];
        continue;
      }
      a_rows[pending] = a.x + b.n * a.sxn + hr * a.sxh + hcol * a.sxw;
      c_rows[pending] = dst;
      if (++pending == kRowBlock) flush();
    }
  }
  flush();
}

// dw[p, c] = relu6(b_dw[c0 + c] + 3x3 taps over the ring) for the band's pixels p = r * cols + q.
void depthwise(const BlockArgs& a, const TilePlan& p, const Band& b, int64_t c0, int64_t hc, const float* ring,
               float* dw) {
  const int64_t s = a.stride, ld = p.ld, row_floats = p.ring_cols * ld;
  for (int64_t cv = 0; cv < hc; cv += kLanes) {
    const Mask mk = make_mask(static_cast<int>(std::min<int64_t>(kLanes, hc - cv)));
    vec wt[9];
    for (int t = 0; t < 9; ++t) wt[t] = load_m(a.w_dw + t * a.hidden + c0 + cv, mk);
    const vec bias = load_m(a.b_dw + c0 + cv, mk);
    for (int64_t r = 0; r < b.rows; ++r) {
      const int64_t hr = b.hr0 + r * s;
      const float* r0 = ring + ring_slot(hr, p.ring_rows) * row_floats + cv;
      const float* r1 = ring + ring_slot(hr + 1, p.ring_rows) * row_floats + cv;
      const float* r2 = ring + ring_slot(hr + 2, p.ring_rows) * row_floats + cv;
      float* out = dw + r * b.cols * ld + cv;
      for (int64_t q = 0; q < b.cols; ++q) {
        const int64_t o = q * s * ld;
        vec v = bias + load(r0 + o) * wt[0] + load(r0 + o + ld) * wt[1] + load(r0 + o + 2 * ld) * wt[2];
        v += load(r1 + o) * wt[3] + load(r1 + o + ld) * wt[4] + load(r1 + o + 2 * ld) * wt[5];
        v += load(r2 + o) * wt[6] + load(r2 + o + ld) * wt[7] + load(r2 + o + 2 * ld) * wt[8];
        store(out + q * ld, relu6(v));
      }
    }
  }
}

// Projects chunk [c0, c0 + hc) of the band's depthwise output (hidden group [h_lo, h_hi)): into
// the accumulator, or, for the group's last chunk, into y with the residual (or into `partial`).
void project(const BlockArgs& a, const TilePlan& p, const Band& b, int64_t c0, int64_t hc, int64_t h_lo,
             int64_t h_hi, const float* dw, float* acc, const float* zeros, float* partial) {
  const bool first = c0 == h_lo, last = c0 + hc >= h_hi, to_y = last && !partial;
  const int64_t M = b.rows * b.cols;
  const float* a_rows[kRowBlock];
  const float* init_rows[kRowBlock];
  float* c_rows[kRowBlock];
  const float* res_rows[kRowBlock];
  for (int64_t i0 = 0; i0 < M; i0 += kRowBlock) {
    const int64_t m = std::min(kRowBlock, M - i0);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t pix = i0 + i, r = b.r0 + pix / b.cols, q = b.q0 + pix % b.cols;
      a_rows[i] = dw + pix * p.ld;
      init_rows[i] = acc + pix * p.acc_ld;
      c_rows[i] = to_y ? a.y + b.n * a.syn + r * a.syh + q * a.syw
                       : last ? partial + ((b.n * a.oh + r) * a.ow + q) * p.acc_ld : acc + pix * p.acc_ld;
      if (to_y && a.residual) res_rows[i] = a.x + b.n * a.sxn + r * a.sxh + q * a.sxw;
    }
    const bool packed = a.proj_packed;  // rows [c0, c0 + hc) of every group
    Gemm g{hc,      a.w_proj + c0 * (packed ? kPackedColumns : a.cout), packed ? kPackedColumns : a.cout, a_rows, 1,
           first ? nullptr : init_rows, h_lo == 0 ? a.b_proj : zeros, c_rows, to_y ? a.syc : 1,
           to_y && a.residual ? res_rows : nullptr, a.sxc, Store::kPlain, nullptr,
           packed ? kPackedColumns * a.hidden : 0};
    gemm(g, m, a.cout);
  }
}

}  // namespace

void MNV2_CAT(run_tiles_, MNV2_ISA)(const BlockArgs& a, const TilePlan& p, int64_t t0, int64_t t1, int64_t group,
                                    float* scratch, float* partial) {
  float* ring = scratch;
  float* dw = scratch + p.off_dw;
  float* acc = scratch + p.off_acc;
  float* im2col = scratch + p.off_im2col;
  const float* zeros = scratch + p.off_zero;
  const int64_t h_lo = group * p.group_size, h_hi = std::min(a.hidden, h_lo + p.group_size);
  // Which hidden rows the ring already holds (every channel of the group; only when the plan carries).
  int64_t ring_n = -1, ring_strip = -1, ring_next = 0;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t band = t % p.bands, strip = (t / p.bands) % p.strips;
    Band b;
    b.n = t / (p.bands * p.strips);
    b.r0 = band * p.rows_out;
    b.rows = std::min(p.rows_out, a.oh - b.r0);
    b.q0 = strip * p.cols_out;
    b.cols = std::min(p.cols_out, a.ow - b.q0);
    b.hr0 = b.r0 * a.stride - 1;
    b.hc0 = b.q0 * a.stride - 1;
    const int64_t hr_end = b.hr0 + (b.rows - 1) * a.stride + 3;
    const bool reuse = p.carry && ring_n == b.n && ring_strip == strip && ring_next > b.hr0;
    const int64_t hr_begin = reuse ? ring_next : b.hr0;
    for (int64_t c0 = h_lo; c0 < h_hi; c0 += p.chunk) {
      const int64_t hc = std::min(p.chunk, h_hi - c0);
      fill_hidden_rows(a, p, b, hr_begin, hr_end, c0, hc, ring, im2col);
      depthwise(a, p, b, c0, hc, ring, dw);
      project(a, p, b, c0, hc, h_lo, h_hi, dw, acc, zeros, partial);
    }
    ring_n = b.n, ring_strip = strip, ring_next = hr_end;
  }
}

void MNV2_CAT(sum_groups_, MNV2_ISA)(const BlockArgs& a, const TilePlan& p, const float* partial, int64_t p0,
                                     int64_t p1) {
  const int64_t plane = (p.plane_pixels) * p.acc_ld;
  for (int64_t i = p0; i < p1; ++i) {
    const int64_t n = i / (a.oh * a.ow), r = i / a.ow % a.oh, q = i % a.ow;
    float* y = a.y + n * a.syn + r * a.syh + q * a.syw;
    const float* res = a.x + n * a.sxn + r * a.sxh + q * a.sxw;
    const float* part = partial + i * p.acc_ld;
    for (int64_t o = 0; o < a.cout; o += kLanes) {
      const int lanes = static_cast<int>(std::min<int64_t>(kLanes, a.cout - o));
      vec v = load(part + o);  // the accumulator rows are padded to whole vectors
      for (int64_t g = 1; g < p.groups; ++g) v += load(part + g * plane + o);
      if (a.syc == 1 && (!a.residual || a.sxc == 1)) {
        const Mask mk = make_mask(lanes);
        if (a.residual) v += load_m(res + o, mk);
        store_m(y + o, v, mk);
      } else {
        float lane[kLanes];
        store(lane, v);
        for (int l = 0; l < lanes; ++l)
          y[(o + l) * a.syc] = lane[l] + (a.residual ? res[(o + l) * a.sxc] : 0.f);
      }
    }
  }
}

void MNV2_CAT(pointwise_pool_, MNV2_ISA)(const PoolArgs& a, int64_t n0, int64_t n1, int64_t j0, int64_t j1) {
  const float* a_rows[kRowBlock];
  const int64_t pixels = a.h * a.wd;
  for (int64_t n = n0; n < n1; ++n) {
    float* y = a.y + n * a.cout;
    std::fill(y + j0, y + j1, 0.f);
    for (int64_t i0 = 0; i0 < pixels; i0 += kRowBlock) {
      const int64_t m = std::min(kRowBlock, pixels - i0);
      for (int64_t i = 0; i < m; ++i)
        a_rows[i] = a.x + n * a.sxn + (i0 + i) / a.wd * a.sxh + (i0 + i) % a.wd * a.sxw;
      Gemm g{a.cin,   a.w_packed ? a.w : a.w + j0, a.w_packed ? kPackedColumns : a.cout, a_rows, a.sxc, nullptr,
             a.b + j0, nullptr, 1,       nullptr,   0, Store::kPool, y + j0, a.w_packed ? kPackedColumns * a.cin : 0,
             j0};
      gemm(g, m, j1 - j0);
    }
    const float scale = 1.f / static_cast<float>(pixels);
    for (int64_t j = j0; j < j1; ++j) y[j] *= scale;
  }
}

void MNV2_CAT(linear_, MNV2_ISA)(const LinearArgs& a, int64_t n0, int64_t n1, int64_t j0, int64_t j1) {
  const float* a_rows[kRowBlock];
  float* c_rows[kRowBlock];
  for (int64_t i0 = n0; i0 < n1; i0 += kRowBlock) {
    const int64_t m = std::min(kRowBlock, n1 - i0);
    for (int64_t i = 0; i < m; ++i) {
      a_rows[i] = a.x + (i0 + i) * a.sxn;
      c_rows[i] = a.y + (i0 + i) * a.o + j0;
    }
    Gemm g{a.k,   a.w_packed ? a.w : a.w + j0, a.w_packed ? kPackedColumns : a.o, a_rows, a.sxk, nullptr, a.b + j0,
           c_rows, 1, nullptr, 0, Store::kPlain, nullptr, a.w_packed ? kPackedColumns * a.k : 0, j0};
    gemm(g, m, j1 - j0);
  }
}

int64_t MNV2_CAT(lanes_, MNV2_ISA)() { return kLanes; }
int64_t MNV2_CAT(max_acc_, MNV2_ISA)() { return kMaxAcc; }

}  // namespace cpu
}  // namespace mnv2_fused
