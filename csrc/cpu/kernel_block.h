// The block pipeline of the CPU kernel, compiled once per instruction set (included by
// tile_kernel_impl.h): a band's hidden rows (expand), the depthwise convolution, the projection,
// and the tile loop that carries the ring of hidden rows from band to band.
#pragma once
#include "kernel_gemm.h"

#include <c10/util/SmallVector.h>

#include <limits>

#include "zero_floats.h"

namespace mnv2_fused {
namespace cpu {
namespace {

struct Band {
  int64_t n, r0, rows, q0, cols;  // output rows [r0, r0 + rows), columns [q0, q0 + cols) of image n
  int64_t hr0, hc0;               // first hidden row / column the band reads (may be padding)
};

inline int64_t ring_slot(int64_t hr, int64_t ring_rows) { return ((hr % ring_rows) + ring_rows) % ring_rows; }

// Prefetches the depthwise's taps and bias for hidden channels [c0, c0 + hc), for a kept plan's
// chunk, which reads them once a forward: the (K * K, hidden) weight's rows lie a.hidden floats
// apart, out of the hardware prefetchers' reach, and each chunk's first taps waited on memory
// (touched first, the 14x14 and 7x7 blocks' depthwise ran 1.11-1.24x faster; with this, blocks
// 6-16 took 0.976-1.018x the time in six ab_builds runs, 60 of 66 below 1). Issued before the
// chunk's expand, they arrive while it runs.
inline void prefetch_depthwise_weights(const BlockArgs& a, int64_t c0, int64_t hc) {
  for (int64_t c = c0; c < c0 + hc; c += kLineFloats) {
    for (int64_t t = 0; t < a.k * a.k; ++t) __builtin_prefetch(a.w_dw + t * a.hidden + c);
    __builtin_prefetch(a.b_dw + c);
  }
}

// The 3x3 convolution's input (a stem's: MobileNetV2's in place of the first block's expand, or
// mnv2_fused.conv3x3 on its own), one output row at a time: the three input rows it reads, for
// output columns [j0, j1), channels-last and zero-padded in `buf` (row dy at buf + dy * ld, input
// column (j0 * stride - 1 + t) at t * cin), rows dy < dy_from left as they are (a stem's band
// keeps the input rows of all its hidden rows, consecutive ones sharing 3 - stride rows). A
// column's patch is three runs of 3 cin neighbouring floats there ([dy][dx][c], the weight's
// (3, 3, Cin, Cout) order), read in place (conv3x3_gemm). Patches gathered tap by tap from an NCHW
// image took longer than the GEMM that reads them.
inline int64_t conv3x3_rows_ld(int64_t cols, int64_t stride, int64_t cin) { return ((cols - 1) * stride + 3) * cin; }

void conv3x3_input_rows(const BlockArgs& a, int64_t n, int64_t r, int64_t j0, int64_t j1, float* buf,
                        int64_t dy_from = 0) {
  const int64_t es = a.expand_stride, cin = a.cin, ld = conv3x3_rows_ld(j1 - j0, es, cin);
  const int64_t iw0 = j0 * es - 1, lo = std::max<int64_t>(0, iw0), hi = std::min(a.w, iw0 + ld / cin);
  for (int64_t dy = dy_from; dy < 3; ++dy) {
    float* row = buf + dy * ld;
    const int64_t ih = r * es - 1 + dy;
    if (ih < 0 || ih >= a.h || lo >= hi) {
      std::fill_n(row, ld, 0.f);
      continue;
    }
    std::fill_n(row, (lo - iw0) * cin, 0.f);
    std::fill(row + (hi - iw0) * cin, row + ld, 0.f);
    const float* src = a.x + n * a.sxn + ih * a.sxh;
    float* dst = row + (lo - iw0) * cin;
    if (a.sxc == 1 && a.sxw == cin) {  // channels_last: the row as it is
      std::memcpy(dst, src + lo * cin, sizeof(float) * (hi - lo) * cin);
      continue;
    }
    int64_t from = lo;  // the first column left to copy
#ifdef MNV2_ISA_INTERLEAVE3
    if (cin == 3 && a.sxw == 1)  // an NCHW image's rows: 8 pixels at a time
      for (; from + 8 <= hi; from += 8)
        interleave3x8(src + from, src + a.sxc + from, src + 2 * a.sxc + from, dst + (from - lo) * cin);
#endif
    // Channel by channel: pixel by pixel, which writes in order, measured 15% slower.
    for (int64_t c = 0; c < cin; ++c)
      for (int64_t iw = from; iw < hi; ++iw) dst[(iw - lo) * cin + c] = src[c * a.sxc + iw * a.sxw];
  }
}

// Copies the patch whose first run starts at src in the input rows (see conv3x3_input_rows; its
// runs ld floats apart) to dst, its runs back to back. Runs of at most a vector are copied as whole
// vectors, in order: the lanes past a run are overwritten by the next run, or by the next patch, or
// land in the slack after the patch buffer, and are read from the next row of the input rows or the
// slack after them (kPatchSlack). Masked copies made MobileNetV2's stem with its first block 0.5-1%
// slower.
inline void conv3x3_patch(const BlockArgs& a, const float* src, int64_t ld, float* dst) {
  static_assert(kLanes <= kPatchSlack, "a whole-vector copy stays within the slack");
  const int64_t run = 3 * a.cin;
  if (run <= kLanes) {
    for (int64_t dy = 0; dy < 3; ++dy) store(dst + dy * run, load(src + dy * ld));
    return;
  }
  for (int64_t dy = 0; dy < 3; ++dy) std::memcpy(dst + dy * run, src + dy * ld, sizeof(float) * run);
}

// g over m output pixels of a 3x3 convolution whose patches are read in place: a_rows[i] is where
// pixel i's patch starts in the input rows (conv3x3_input_rows, ld floats a row). The micro-tiles
// read the patches' three runs there (Gemm::a_seg); the rows short of a micro-tile, or all of them
// where micro-tiles do not apply, are copied to `patches` first. Copying every patch took ~10% of
// MobileNetV2's stem with its first block at batch 8; read in place, that stage ran 1.03-1.06x
// faster at batch 1 and 1.04-1.09x at batch 8.
void conv3x3_gemm(const BlockArgs& a, Gemm g, const float** a_rows, float** c_rows, int64_t m, int64_t n,
                  int64_t ld, float* patches) {
  g.a = a_rows;
  g.c = c_rows;
  const int64_t full = segmented_rows(g, m, n);
  if (full > 0) {
    g.a_seg = ld;
    gemm(g, full, n);
    g.a_seg = 0;
  }
  for (int64_t i = full; i < m; ++i) {
    conv3x3_patch(a, a_rows[i], ld, patches + (i - full) * g.K);
    a_rows[i] = patches + (i - full) * g.K;
  }
  g.a = a_rows + full;
  g.c = c_rows + full;
  if (m > full) gemm(g, m - full, n);
}

// Fills the ring rows [hr_begin, hr_end) with hidden channels [c0, c0 + hc), for the band's columns.
void fill_hidden_rows(const BlockArgs& a, const TilePlan& p, const Band& b, int64_t hr_begin, int64_t hr_end,
                      int64_t c0, int64_t hc, float* ring, float* im2col, float* input_rows) {
  const int64_t row_floats = p.ring_cols * p.ld;
  const int64_t ncols = (b.cols - 1) * a.stride + dw_span(a);
  // Columns of the ring inside the hidden image.
  const int64_t jlo = std::max<int64_t>(0, -b.hc0), jhi = std::min(ncols, a.hw - b.hc0);
  const float* a_rows[kRowBlock];
  float* c_rows[kRowBlock];
  int64_t pending = 0;
  const int64_t K = a.expand == Expand::kConv3x3 ? 9 * a.cin : a.cin;
  // A 3x3 expand's input rows, for all the band's hidden rows at once (conv3x3_gemm reads the
  // patches from them).
  const int64_t in_ld = conv3x3_rows_ld(jhi - jlo, a.expand_stride, a.cin);
  auto flush = [&]() {
    if (pending == 0) return;
    Gemm g;
    g.set_weights(a.w_expand, a.expand_packed, K, 0, K, a.hidden, c0);
    g.a = a_rows;
    g.ak = a.expand == Expand::kConv3x3 ? 1 : a.sxc;
    g.bias = a.b_expand + c0;
    g.c = c_rows;
    g.store = Store::kAct;
    g.act = a.act;
    g.cursor = a.warm;
    if (a.expand == Expand::kConv3x3) conv3x3_gemm(a, g, a_rows, c_rows, pending, hc, in_ld, im2col);
    else gemm(g, pending, hc);
    pending = 0;
  };
  int64_t filled_row = std::numeric_limits<int64_t>::min();  // the last hidden row given its input rows
  // Rows above and below the image are left unwritten where zero_floats has room for a row: the
  // depthwise reads that instead. Zeroing them was about 1.1 MB of memset a batch-1 forward of
  // MobileNetV2 (215 rows); without it the forward took 0.984x, 0.995x and 0.994x the time
  // (benchmarks/ab_builds.py, 80, 80 and 150 rounds; blocks 6-16 mostly 0.98-0.99x). The left and
  // right padding columns (about 0.97 MB a forward, a pixel at a time) are still zeroed here:
  // leaving them out of the depthwise's taps made blocks 1-10 up to 1.02x slower, the forward 1.008x.
  const bool rows_read_as_zeros = zero_floats(row_floats) != nullptr;
  for (int64_t hr = hr_begin; hr < hr_end; ++hr) {
    float* row = ring + ring_slot(hr, p.ring_rows) * row_floats;
    const bool outside = hr < 0 || hr >= a.hh;  // above or below the image
    if (outside || jlo >= jhi) {  // the depthwise's zero padding
      if (!outside || !rows_read_as_zeros) std::memset(row, 0, sizeof(float) * row_floats);
      continue;
    }
    if (jlo > 0) std::memset(row, 0, sizeof(float) * jlo * p.ld);
    if (jhi < ncols) std::memset(row + jhi * p.ld, 0, sizeof(float) * (ncols - jhi) * p.ld);
    if (a.expand == Expand::kConv3x3) {
      // Hidden row hr's three input rows at (hr - hr_begin) * stride rows into the buffer: the
      // rows it shares with hr - 1 are there already when that row was filled.
      const int64_t es = a.expand_stride;
      float* rows = input_rows + (hr - hr_begin) * es * in_ld;
      conv3x3_input_rows(a, b.n, hr, b.hc0 + jlo, b.hc0 + jhi, rows,
                         filled_row == hr - 1 ? std::max<int64_t>(0, 3 - es) : 0);
      filled_row = hr;
      for (int64_t j = jlo; j < jhi; ++j) {
        if (pending == kRowBlock) flush();
        a_rows[pending] = rows + (j - jlo) * es * a.cin;
        c_rows[pending++] = row + j * p.ld;
      }
      continue;
    }
    if (a.expand == Expand::kNone && a.sxc == 1 && a.sxw == hc && p.ld == hc) {
      // The row's pixels lie back to back in x, as in the ring: one copy, not one per pixel (a
      // pixel of 16 channels is 64 bytes, about as long to copy as the call to copy it).
      std::memcpy(row + jlo * p.ld, a.x + b.n * a.sxn + hr * a.sxh + (b.hc0 + jlo) * a.sxw + c0,
                  sizeof(float) * (jhi - jlo) * hc);
      continue;
    }
    const float* x_row = a.x + b.n * a.sxn + hr * a.sxh + (b.hc0 + jlo) * a.sxw;  // the ring's column jlo
    if (a.expand == Expand::kNone) {
      for (int64_t j = jlo; j < jhi; ++j) {
        const float* src = x_row + (j - jlo) * a.sxw + c0 * a.sxc;
        float* dst = row + j * p.ld;
        if (a.sxc == 1) std::memcpy(dst, src, sizeof(float) * hc);
        else for (int64_t c = 0; c < hc; ++c) dst[c] = src[c * a.sxc];
      }
      continue;
    }
    for (int64_t j = jlo; j < jhi;) {  // the GEMM's rows, a block at a time
      const int64_t take = std::min(jhi - j, kRowBlock - pending);
      for (int64_t k = 0; k < take; ++k) {
        a_rows[pending + k] = x_row + (j - jlo + k) * a.sxw;
        c_rows[pending + k] = row + (j + k) * p.ld;
      }
      pending += take, j += take;
      if (pending == kRowBlock) flush();
    }
  }
  flush();
}

// dw[p * ld + c] = act(b_dw[c0 + c] + the K x K (dilated) taps over the ring), times gate[c] when
// gate is not null, for the band's pixels p = r * cols + q. One pixel at a time, its taps one
// chain of FMAs: in MobileNetV2 (AVX2, batch 1), steps of 3-5 pixels sharing their input loads,
// though 1.1-1.45x faster in a standalone loop, made the depthwise 1.1-1.25x slower here (inlined,
// GCC spills; on its own, no faster), a partial sum per kernel row was level, and so was
// prefetching the next weights; prefetching the ring made it slower. With AVX-512's 32 registers
// (Zen 4, no spills) 4 pixels a step were level too (every stage 0.99-1.04x); the ring's rows
// prefetched a row ahead, or the rows walked outermost, were level or slower. Where it is slowest
// (27-56% of a core in the 14x14 and 7x7 blocks, whose depthwise output is kept) it ran 1.4-2.3x
// faster timed again at once on the same ring, but the whole ring prefetched before it, or its
// output lines prefetched for writing, were level: its taps were what waited on memory (see
// prefetch_depthwise_weights).
template <int K, Act kAct>
void depthwise_k(const BlockArgs& a, const TilePlan& p, const Band& b, int64_t c0, int64_t hc, const float* ring,
                 const float* gate, float* dw, int64_t ld) {
  // The ring's stride in a local: for all the compiler knows, the stores may alias p.
  const int64_t s = a.stride, ring_ld = p.ld, row_floats = p.ring_cols * ring_ld, dil = a.dilation;
  const int64_t rows = b.rows, cols = b.cols;
  if (rows <= 0 || cols <= 0) return;
  // Rows above and below the image, where fill_hidden_rows left the ring unwritten.
  const float* const zeros = zero_floats(row_floats);
  // Where each hidden row the band reads lies (hidden row b.hr0 + i at ring_rows[i]): worked out
  // once, not per channel vector and output row, where ring_slot's two divisions per row stood in
  // front of the row's loads. MobileNetV2, batch 1, 2 threads, Zen 4, three ab_builds runs: the
  // forward 0.994-0.997x, the stem 0.980-0.995x, block 1 0.978-1.000x, most other blocks 0.98-1.00x.
  const int64_t span = (rows - 1) * s + dw_span(a);
  c10::SmallVector<const float*, 64> ring_rows(static_cast<size_t>(span));
  for (int64_t i = 0; i < span; ++i) {
    const int64_t h = b.hr0 + i;
    const bool padding = zeros != nullptr && (h < 0 || h >= a.hh);
    ring_rows[i] = padding ? zeros : ring + ring_slot(h, p.ring_rows) * row_floats;
  }
  for (int64_t cv = 0; cv < hc; cv += kLanes) {
    const Mask mk = make_mask(static_cast<int>(std::min<int64_t>(kLanes, hc - cv)));
    vec wt[K * K];
    for (int t = 0; t < K * K; ++t) wt[t] = load_m(a.w_dw + t * a.hidden + c0 + cv, mk);
    const vec bias = load_m(a.b_dw + c0 + cv, mk);
    const vec factor = gate ? load_m(gate + cv, mk) : splat(1.f);
    for (int64_t r = 0; r < rows; ++r) {
      const float* rp[K];
      for (int ky = 0; ky < K; ++ky) rp[ky] = ring_rows[r * s + ky * dil] + cv;
      float* out = dw + r * cols * ld + cv;
      for (int64_t q = 0; q < cols; ++q) {
        const int64_t o = q * s * ring_ld;
        vec v = bias;
        for (int ky = 0; ky < K; ++ky)
          for (int kx = 0; kx < K; ++kx) v += load(rp[ky] + o + kx * dil * ring_ld) * wt[ky * K + kx];
        v = activate(v, kAct);  // a constant: the branch folds away
        if (gate) v *= factor;
        store(out + q * ld, v);
      }
    }
  }
}

template <int K>
__attribute__((always_inline)) inline void depthwise_act(const BlockArgs& a, const TilePlan& p, const Band& b,
                                                         int64_t c0, int64_t hc, const float* ring, float* dw,
                                                         int64_t ld) {
  const float* gate = a.gate ? a.gate + b.n * a.hidden + c0 : nullptr;
  switch (a.act) {
    case Act::kReLU6: depthwise_k<K, Act::kReLU6>(a, p, b, c0, hc, ring, gate, dw, ld); break;
    case Act::kReLU: depthwise_k<K, Act::kReLU>(a, p, b, c0, hc, ring, gate, dw, ld); break;
    case Act::kSiLU:  // costly (kernel_gemm.h): after the taps, in a pass of its own
      depthwise_k<K, Act::kNone>(a, p, b, c0, hc, ring, nullptr, dw, ld);
      activate_rows(dw, b.rows * b.cols, ld, hc, Act::kSiLU, gate);
      break;
    default: depthwise_k<K, Act::kHardswish>(a, p, b, c0, hc, ring, gate, dw, ld); break;  // the op allows these four
  }
}

// The band's depthwise output, ld floats per pixel (its rows back to back). Inlined into both
// callers (run_tiles, expand_depthwise): out of line, MobileNetV2's 112x112-28x28 blocks, which run
// bands, took 1.01-1.05x longer at batch 1 (AVX2, 2 threads; benchmarks/ab_builds.py, 3 runs).
__attribute__((always_inline)) inline void depthwise(const BlockArgs& a, const TilePlan& p, const Band& b,
                                                     int64_t c0, int64_t hc, const float* ring, float* dw, int64_t ld) {
  switch (a.k) {
    case 1: depthwise_act<1>(a, p, b, c0, hc, ring, dw, ld); break;
    case 3: depthwise_act<3>(a, p, b, c0, hc, ring, dw, ld); break;
    case 5: depthwise_act<5>(a, p, b, c0, hc, ring, dw, ld); break;
    default: depthwise_act<7>(a, p, b, c0, hc, ring, dw, ld); break;  // the checks allow 1, 3, 5, 7
  }
}

// The squeeze-and-excite's first pass: adds the band's depthwise output, channel by channel, to
// its image's sums.
void sum_channels(const BlockArgs& a, const TilePlan& p, const Band& b, int64_t c0, int64_t hc, const float* dw,
                  float* channel_sums) {
  float* sums = channel_sums + b.n * a.hidden + c0;
  const int64_t pixels = b.rows * b.cols;
  for (int64_t cv = 0; cv < hc; cv += kLanes) {
    const Mask mk = make_mask(static_cast<int>(std::min<int64_t>(kLanes, hc - cv)));
    vec total = splat(0.f);
    for (int64_t i = 0; i < pixels; ++i) total += load(dw + i * p.ld + cv);
    store_m(sums + cv, load_m(sums + cv, mk) + total, mk);
  }
}

// The squeeze-and-excite's first pass, when the depthwise output is kept: the band's rows of
// channels [c0, c0 + hc) into a.dw_store.
void keep_depthwise(const BlockArgs& a, const TilePlan& p, const Band& b, int64_t c0, int64_t hc, const float* dw) {
  // Every channel, unpadded: a band's row is one run in both (a call per pixel cost as much as
  // the copy).
  const bool whole_rows = hc == a.dw_store_ld && p.ld == hc;
  for (int64_t r = 0; r < b.rows; ++r) {
    float* dst = a.dw_store + ((b.n * a.oh + b.r0 + r) * a.ow + b.q0) * a.dw_store_ld + c0;
    const float* src = dw + r * b.cols * p.ld;
    if (whole_rows) {
      std::memcpy(dst, src, sizeof(float) * b.cols * hc);
      continue;
    }
    for (int64_t q = 0; q < b.cols; ++q) std::memcpy(dst + q * a.dw_store_ld, src + q * p.ld, sizeof(float) * hc);
  }
}

// Projects chunk [c0, c0 + hc) of the band's depthwise output: into the accumulator, or, for the
// last chunk, into y with the residual.
void project(const BlockArgs& a, const TilePlan& p, const Band& b, int64_t c0, int64_t hc, const float* dw,
             float* acc) {
  const bool first = c0 == 0, last = c0 + hc >= a.hidden;
  const int64_t M = b.rows * b.cols;
  const float* a_rows[kRowBlock];
  const float* init_rows[kRowBlock];
  float* c_rows[kRowBlock];
  const float* res_rows[kRowBlock];
  int64_t r = b.r0, q = b.q0;  // output pixel of row pix (no division per row)
  // Where output pixel (r, q) goes: y (with the residual from x), or (chunks before the last) the
  // accumulator, row by row.
  float* const y_band = a.y + b.n * a.syn;
  const float* const x_band = a.x + b.n * a.sxn;
  for (int64_t i0 = 0; i0 < M; i0 += kRowBlock) {
    const int64_t m = std::min(kRowBlock, M - i0);
    for (int64_t i = 0; i < m; ++i) a_rows[i] = dw + (i0 + i) * p.ld;
    if (!first)
      for (int64_t i = 0; i < m; ++i) init_rows[i] = acc + (i0 + i) * p.acc_ld;
    if (!last) {
      for (int64_t i = 0; i < m; ++i) c_rows[i] = acc + (i0 + i) * p.acc_ld;
    } else {
      // Pixels in runs along a band row: one multiply per run, not per pixel.
      for (int64_t i = 0; i < m;) {
        const int64_t run = std::min(m - i, b.q0 + b.cols - q);
        float* yr = y_band + r * a.syh + q * a.syw;
        for (int64_t k = 0; k < run; ++k) c_rows[i + k] = yr + k * a.syw;
        if (a.residual) {
          const float* xr = x_band + r * a.sxh + q * a.sxw;
          for (int64_t k = 0; k < run; ++k) res_rows[i + k] = xr + k * a.sxw;
        }
        i += run, q += run;
        if (q == b.q0 + b.cols) q = b.q0, ++r;
      }
    }
    Gemm g;
    g.set_weights(a.w_proj, a.proj_packed, a.hidden, c0, hc, a.cout, 0);
    g.a = a_rows;
    g.init = first ? nullptr : init_rows;
    g.bias = a.b_proj;
    g.c = c_rows;
    g.ck = last ? a.syc : 1;
    g.res = last && a.residual ? res_rows : nullptr;
    g.rk = a.sxc;
    g.cursor = a.warm;
    gemm(g, m, a.cout);
  }
}

}  // namespace

void MNV2_CAT(run_tiles_, MNV2_ISA)(const BlockArgs& a, const TilePlan& p, int64_t t0, int64_t t1, int64_t group,
                                    RingState* ring_state, float* scratch, float* channel_sums) {
  float* ring = scratch;
  float* dw = scratch + p.off_dw;
  float* acc = scratch + p.off_acc;
  float* im2col = scratch + p.off_im2col;
  float* input_rows = scratch + p.off_input_rows;
  const int64_t h_lo = group * p.group_size, h_hi = std::min(a.hidden, h_lo + p.group_size);
  // Which hidden rows the ring already holds (every channel of the group; only when the plan carries):
  // those of the worker's last run when this run follows it.
  int64_t ring_n = -1, ring_strip = -1, ring_next = 0;
  if (ring_state && ring_state->end == t0)
    ring_n = ring_state->n, ring_strip = ring_state->strip, ring_next = ring_state->next;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t band = t % p.bands, strip = (t / p.bands) % p.strips;
    Band b;
    b.n = t / (p.bands * p.strips);
    b.r0 = band * p.rows_out;
    b.rows = std::min(p.rows_out, a.oh - b.r0);
    b.q0 = strip * p.cols_out;
    b.cols = std::min(p.cols_out, a.ow - b.q0);
    b.hr0 = b.r0 * a.stride - a.pad_top;
    b.hc0 = b.q0 * a.stride - a.pad_left;
    const int64_t hr_end = b.hr0 + (b.rows - 1) * a.stride + dw_span(a);
    const bool reuse = p.carry && ring_n == b.n && ring_strip == strip && ring_next > b.hr0;
    const int64_t hr_begin = reuse ? ring_next : b.hr0;
    for (int64_t c0 = h_lo; c0 < h_hi; c0 += p.chunk) {
      const int64_t hc = std::min(p.chunk, h_hi - c0);
      fill_hidden_rows(a, p, b, hr_begin, hr_end, c0, hc, ring, im2col, input_rows);
      depthwise(a, p, b, c0, hc, ring, dw, p.ld);
      if (channel_sums) {
        sum_channels(a, p, b, c0, hc, dw, channel_sums);
        if (a.dw_store) keep_depthwise(a, p, b, c0, hc, dw);
      } else {
        project(a, p, b, c0, hc, dw, acc);
      }
    }
    ring_n = b.n, ring_strip = strip, ring_next = hr_end;
  }
  if (ring_state) *ring_state = RingState{t1, ring_n, ring_strip, ring_next};
}

void MNV2_CAT(expand_depthwise_, MNV2_ISA)(const BlockArgs& a, const TilePlan& p, int64_t images, int64_t c0,
                                           int64_t c1, float* scratch) {
  float* ring = scratch;
  float* im2col = scratch + p.off_im2col;
  float* input_rows = scratch + p.off_input_rows;
  const int64_t ld = a.dw_store_ld;
  // Chunk by chunk, each through every band of every image: the ring carries from band to band.
  for (int64_t c = c0; c < c1; c += p.chunk) {
    const int64_t hc = std::min(p.chunk, c1 - c);
    prefetch_depthwise_weights(a, c, hc);
    for (int64_t n = 0; n < images; ++n) {
      int64_t ring_next = std::numeric_limits<int64_t>::min();  // the hidden row after the last the ring holds
      for (int64_t r0 = 0; r0 < a.oh; r0 += p.rows_out) {
        Band b;
        b.n = n, b.r0 = r0, b.rows = std::min(p.rows_out, a.oh - r0), b.q0 = 0, b.cols = a.ow;
        b.hr0 = r0 * a.stride - a.pad_top;
        b.hc0 = -a.pad_left;
        const int64_t hr_end = b.hr0 + (b.rows - 1) * a.stride + dw_span(a);
        fill_hidden_rows(a, p, b, std::max(b.hr0, ring_next), hr_end, c, hc, ring, im2col, input_rows);
        depthwise(a, p, b, c, hc, ring, a.dw_store + (n * a.oh + r0) * a.ow * ld + c, ld);
        ring_next = hr_end;
      }
    }
  }
}

namespace {

// Columns [j0, j1) of the projection weight, each row k times image n's gate[k], into `out` (the
// weight's own layout, packed or (hidden, Cout) row-major).
void gate_weight_columns(const BlockArgs& a, int64_t n, int64_t j0, int64_t j1, float* out) {
  static_assert(kPackedColumns % kLanes == 0, "a packed group is whole vectors");
  const float* gate = a.gate + n * a.hidden;
  if (a.proj_packed) {
    const int64_t group = kPackedColumns * a.hidden;
    for (int64_t g = j0 / kPackedColumns; g * kPackedColumns < j1; ++g)
      for (int64_t k = 0; k < a.hidden; ++k) {
        const int64_t at = g * group + k * kPackedColumns;
        for (int64_t c = 0; c < kPackedColumns; c += kLanes)
          store(out + at + c, load(a.w_proj + at + c) * splat(gate[k]));
      }
    return;
  }
  for (int64_t k = 0; k < a.hidden; ++k)
    for (int64_t j = j0; j < j1; ++j) out[k * a.cout + j] = a.w_proj[k * a.cout + j] * gate[k];
}

// `count` rows of n floats, each times gate[k] column by column, into out (n floats per row; out
// may be rows itself).
void gate_rows_into(const float* rows, int64_t count, int64_t n, const float* gate, float* out) {
  for (int64_t i = 0; i < count; ++i) {
    const float* src = rows + i * n;
    float* dst = out + i * n;
    int64_t k = 0;
    for (; k + kLanes <= n; k += kLanes) store(dst + k, load(src + k) * load(gate + k));
    if (k < n) {
      const Mask mk = make_mask(static_cast<int>(n - k));
      store_m(dst + k, load_m(src + k, mk) * load_m(gate + k, mk), mk);
    }
  }
}

// Output pixels [p0, p1) from their depthwise rows (ld floats each, from `rows` on).
void project_rows(const BlockArgs& a, const float* rows, int64_t ld, int64_t p0, int64_t p1, int64_t j0, int64_t j1) {
  const float* a_rows[kRowBlock];
  float* c_rows[kRowBlock];
  const float* res_rows[kRowBlock];
  // Pixel p0's image, row and column, then counted along (no division per row).
  int64_t n = p0 / (a.oh * a.ow), r = p0 / a.ow % a.oh, q = p0 % a.ow;
  for (int64_t i0 = p0; i0 < p1; i0 += kRowBlock) {
    const int64_t m = std::min(kRowBlock, p1 - i0);
    for (int64_t i = 0; i < m; ++i) {
      a_rows[i] = rows + (i0 - p0 + i) * ld;
      c_rows[i] = a.y + n * a.syn + r * a.syh + q * a.syw + j0 * a.syc;
      if (a.residual) res_rows[i] = a.x + n * a.sxn + r * a.sxh + q * a.sxw + j0 * a.sxc;
      if (++q == a.ow) {
        q = 0;
        if (++r == a.oh) r = 0, ++n;
      }
    }
    Gemm g;
    g.set_weights(a.w_proj, a.proj_packed, a.hidden, 0, a.hidden, a.cout, j0);
    g.a = a_rows;
    g.bias = a.b_proj + j0;
    g.c = c_rows;
    g.ck = a.syc;
    g.res = a.residual ? res_rows : nullptr;
    g.rk = a.sxc;
    g.cursor = a.warm;
    gemm(g, m, j1 - j0);
  }
}

}  // namespace

void MNV2_CAT(project_kept_, MNV2_ISA)(const BlockArgs& a, int64_t p0, int64_t p1, int64_t j0, int64_t j1,
                                       GateInto into, float* copy) {
  const int64_t image = p0 / (a.oh * a.ow), ld = a.dw_store_ld;
  float* rows = a.dw_store + p0 * ld;
  switch (into) {
    case GateInto::kNone: return project_rows(a, rows, ld, p0, p1, j0, j1);
    case GateInto::kRows:
    case GateInto::kRowsCopy: {  // the squeeze-and-excite keeps unpadded rows: ld == hidden
      float* gated = into == GateInto::kRows ? rows : copy;
      gate_rows_into(rows, p1 - p0, a.hidden, a.gate + image * a.hidden, gated);
      return project_rows(a, gated, a.hidden, p0, p1, j0, j1);
    }
    case GateInto::kWeightCopy: {
      gate_weight_columns(a, image, j0, j1, copy);
      BlockArgs b = a;
      b.w_proj = copy;
      return project_rows(b, rows, ld, p0, p1, j0, j1);
    }
  }
}

}  // namespace cpu
}  // namespace mnv2_fused
