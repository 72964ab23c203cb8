// The CUDA kernel of mnv2_fused::inverted_residual: expand and projection on tensor cores (WMMA),
// the hidden tile only in shared memory. tc_plan.h says how a call is cut up and where the buffers
// live; this file is the device code, written against simt.h so that the tests run this very source
// on the CPU. Input and output are NHWC (channels_last), contiguous.
//
// Precision: fp16 and bf16 multiply in their own type and accumulate in fp32 (the expand's output
// stays fp32 in shared memory; the depthwise output is rounded to the input type, as PyTorch's own
// fp16 computation rounds it). fp32 runs as three TF32 products per tile (3xTF32: each operand split
// into a TF32 head and a TF32 tail, the tail x tail product dropped), about fp32's accuracy at a
// third of TF32's tensor-core rate.
#pragma once
#include <cstdint>

#include "simt.h"
#include "tc_plan.h"

namespace mnv2_fused {
namespace cuda {

namespace wmma = nvcuda::wmma;

// How T's matrix products run: the fragment element type and the MMA's K.
template <typename T>
struct Mma;
template <>
struct Mma<__half> {
  using precision = __half;
  static constexpr int k = 16;
  static constexpr bool split = false;
};
template <>
struct Mma<__nv_bfloat16> {
  using precision = __nv_bfloat16;
  static constexpr int k = 16;
  static constexpr bool split = false;
};
template <>
struct Mma<float> {
  using precision = wmma::precision::tf32;
  static constexpr int k = 8;
  static constexpr bool split = true;
};

MNV2_DEVICE float to_float(float v) { return v; }
MNV2_DEVICE float to_float(__half v) { return __half2float(v); }
MNV2_DEVICE float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
MNV2_DEVICE T from_float(float v);
template <>
MNV2_DEVICE float from_float<float>(float v) { return v; }
template <>
MNV2_DEVICE __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
MNV2_DEVICE __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ReLU6 that keeps NaN (fminf/fmaxf would turn NaN into a number).
MNV2_DEVICE float relu6(float v) { return v < 0.f ? 0.f : (v > 6.f ? 6.f : v); }

// The first input row (or column) of the 3x3 window of output row (column) o: padding 1.
MNV2_DEVICE int halo_origin(int o, int stride) { return o * stride - 1; }

template <typename T>
struct KernelArgs {
  const T* x;        // (N, H, W, Cin)
  T* y;              // (N, OH, OW, Cout)
  float* partial;    // (N, OH, OW, Cout), zeroed, when plan.splits > 1
  const T* w_expand; // (hidden, Cin), or null
  const T* b_expand;
  const T* w_dw;     // (hidden, 9)
  const T* b_dw;
  const T* w_proj;   // (Cout, hidden)
  const T* b_proj;
  int64_t n;
  int cin, h, w, hidden, cout, oh, ow, stride;
  bool expand, residual;
  TcPlan p;
  // Rows of x, w_expand and w_proj that can be staged in 16-byte copies (see set_vector_rows).
  bool vec_x = false, vec_we = false, vec_wp = false;
};

// Elements of T in one 16-byte copy.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// Which tensors' rows the kernel may stage 16 bytes at a time: 16-byte aligned, and row lengths
// (and so every row start and the chunk offsets, multiples of 16) a multiple of kVec.
template <typename T>
void set_vector_rows(KernelArgs<T>& a) {
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  a.vec_x = a.cin % kVec<T> == 0 && aligned(a.x);
  a.vec_we = a.expand && a.cin % kVec<T> == 0 && aligned(a.w_expand);
  a.vec_wp = a.hidden % kVec<T> == 0 && aligned(a.w_proj);
}

// dst[r][c] (row stride dst_ld) for r < rows, c < cols_pad: row r of the source (src(r), or null
// for a row of zeros) up to cols, zeros after. With vec, 16-byte copies: cols and cols_pad are then
// multiples of kVec and the source rows 16-byte aligned.
template <typename T, typename Src>
MNV2_DEVICE void stage_rows(T* dst, int dst_ld, int rows, int cols, int cols_pad, bool vec, int tid, Src src) {
  if (vec) {
    const int vecs = cols_pad / kVec<T>;
    for (int i = tid; i < rows * vecs; i += kThreads) {
      const int r = i / vecs, c = (i % vecs) * kVec<T>;
      const T* row = src(r);
      if (row != nullptr && c < cols) copy16(dst + r * dst_ld + c, row + c);
      else zero16(dst + r * dst_ld + c);
    }
    return;
  }
  const T zero = from_float<T>(0.f);
  for (int i = tid; i < rows * cols_pad; i += kThreads) {
    const int r = i / cols_pad, c = i % cols_pad;
    const T* row = src(r);
    dst[r * dst_ld + c] = row != nullptr && c < cols ? row[c] : zero;
  }
}

template <typename T>
struct Frags {
  using A = wmma::fragment<wmma::matrix_a, 16, 16, Mma<T>::k, typename Mma<T>::precision, wmma::row_major>;
  using B = wmma::fragment<wmma::matrix_b, 16, 16, Mma<T>::k, typename Mma<T>::precision, wmma::col_major>;
  using C = wmma::fragment<wmma::accumulator, 16, 16, Mma<T>::k, float>;
};

// 3xTF32: v = head + tail, both exactly TF32 (the tensor cores read only TF32's bits).
template <typename F>
MNV2_DEVICE void split_tf32(F& head, F& tail) {
  for (int i = 0; i < head.num_elements; ++i) {
    const float v = head.x[i];
    const float hi = wmma::__float_to_tf32(v);
    head.x[i] = hi;
    tail.x[i] = wmma::__float_to_tf32(v - hi);
  }
}

// acc += A (16 x k_total, row-major at a, leading dimension lda) times B, where B's 16 columns are
// the rows of b (16 x k_total, row-major at b, ldb): both operands are "rows of channels".
template <typename T>
MNV2_DEVICE void mma_rows(typename Frags<T>::C& acc, const T* a, int lda, const T* b, int ldb, int k_total) {
  for (int k = 0; k < k_total; k += Mma<T>::k) {
    typename Frags<T>::A fa;
    typename Frags<T>::B fb;
    wmma::load_matrix_sync(fa, a + k, lda);
    wmma::load_matrix_sync(fb, b + k, ldb);
    if constexpr (Mma<T>::split) {
      typename Frags<T>::A fa_tail;
      typename Frags<T>::B fb_tail;
      split_tf32(fa, fa_tail);
      split_tf32(fb, fb_tail);
      wmma::mma_sync(acc, fa_tail, fb, acc);  // the small terms first
      wmma::mma_sync(acc, fa, fb_tail, acc);
    }
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// One CTA: a th x tw tile of output pixels of one image (blockIdx.x), output channels
// [co0, co0 + cout_part) (blockIdx.y), the hidden chunks of split blockIdx.z.
template <typename T>
MNV2_GLOBAL(kThreads) inverted_residual_tc_kernel(const KernelArgs<T> a) {
  MNV2_DYNAMIC_SHARED(smem);
  const TcPlan& p = a.p;
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32;
  int64_t tile = blockIdx.x;
  const int tx = static_cast<int>(tile % p.tiles_w);
  tile /= p.tiles_w;
  const int ty = static_cast<int>(tile % p.tiles_h);
  const int64_t n = tile / p.tiles_h;
  const int co0 = static_cast<int>(blockIdx.y) * p.cout_part;
  const int oy0 = ty * p.th, ox0 = tx * p.tw;
  const int iy0 = halo_origin(oy0, a.stride), ix0 = halo_origin(ox0, a.stride);
  const int in_pixels = p.in_h * p.in_w, out_pixels = p.th * p.tw;
  const T* xn = a.x + n * a.h * a.w * a.cin;

  T* xs = reinterpret_cast<T*>(smem + p.off_xs);        // [in_rows][x_ld]: input tile, all channels
  T* we = reinterpret_cast<T*>(smem + p.off_we);        // [hc][x_ld]: the chunk's expand rows
  float* be = reinterpret_cast<float*>(smem + p.off_be);    // [16][hid_ld]: its bias, row repeated
  float* hid = reinterpret_cast<float*>(smem + p.off_hid);  // [in_rows][hid_ld]: expanded chunk
  float* wd = reinterpret_cast<float*>(smem + p.off_wd);    // [10][hc]: depthwise taps, then bias
  T* dw = reinterpret_cast<T*>(smem + p.off_dw);        // [out_rows][dw_ld]: depthwise output
  T* wp = reinterpret_cast<T*>(smem + p.off_wp);        // [cout_part][dw_ld]: projection columns
  float* stage = reinterpret_cast<float*>(smem + p.off_stage);  // [out_rows][stage_ld], at the end

  // This warp's accumulator tiles: t = warp + j * kWarps over (out_rows / 16) x (cout_part / 16).
  const int n_tiles = p.cout_part / 16;
  const int acc_tiles = (p.out_rows / 16) * n_tiles;
  typename Frags<T>::C acc[kMaxAccPerWarp];
#pragma unroll
  for (int j = 0; j < kMaxAccPerWarp; ++j) wmma::fill_fragment(acc[j], 0.f);

  auto inside = [&](int iy, int ix) { return iy >= 0 && iy < a.h && ix >= 0 && ix < a.w; };
  const T zero = from_float<T>(0.f);

  // The expand's A, once: the input tile with its halo, every channel; zeros outside the image,
  // past Cin and in the rows that round the tile up to 16.
  if (a.expand)
    stage_rows(xs, p.x_ld, p.in_rows, a.cin, p.cin_pad, a.vec_x, tid, [&](int r) -> const T* {
      const int iy = iy0 + r / p.in_w, ix = ix0 + r % p.in_w;
      return r < in_pixels && inside(iy, ix) ? xn + (int64_t(iy) * a.w + ix) * a.cin : nullptr;
    });

  const int chunk_end = p.chunks < (static_cast<int>(blockIdx.z) + 1) * p.chunks_per_split
                            ? p.chunks
                            : (static_cast<int>(blockIdx.z) + 1) * p.chunks_per_split;
  for (int chunk = static_cast<int>(blockIdx.z) * p.chunks_per_split; chunk < chunk_end; ++chunk) {
    const int h0 = chunk * p.hc;
    // 1. The chunk's weights, zeros past the hidden width; without an expand, the chunk's input
    //    channels are the hidden tile itself.
    if (a.expand) {
      stage_rows(we, p.x_ld, p.hc, a.cin, p.cin_pad, a.vec_we, tid, [&](int r) -> const T* {
        return h0 + r < a.hidden ? a.w_expand + int64_t(h0 + r) * a.cin : nullptr;
      });
      for (int i = tid; i < 16 * p.hc; i += kThreads) {
        const int c = i % p.hc;
        be[(i / p.hc) * p.hid_ld + c] = h0 + c < a.hidden ? to_float(a.b_expand[h0 + c]) : 0.f;
      }
    } else {
      for (int i = tid; i < p.in_rows * p.hc; i += kThreads) {
        const int r = i / p.hc, c = i % p.hc;
        const int iy = iy0 + r / p.in_w, ix = ix0 + r % p.in_w;
        hid[r * p.hid_ld + c] = r < in_pixels && h0 + c < a.hidden && inside(iy, ix)
                                    ? to_float(xn[(int64_t(iy) * a.w + ix) * a.cin + h0 + c])
                                    : 0.f;
      }
    }
    for (int i = tid; i < 10 * p.hc; i += kThreads) {
      const int t = i / p.hc, c = i % p.hc;
      const bool in = h0 + c < a.hidden;
      wd[i] = !in ? 0.f : t < 9 ? to_float(a.w_dw[(h0 + c) * 9 + t]) : to_float(a.b_dw[h0 + c]);
    }
    const int chunk_width = a.hidden - h0 < p.hc ? a.hidden - h0 : p.hc;
    stage_rows(wp, p.dw_ld, p.cout_part, chunk_width, p.hc, a.vec_wp, tid, [&](int o) -> const T* {
      return co0 + o < a.cout ? a.w_proj + int64_t(co0 + o) * a.hidden + h0 : nullptr;
    });
    __syncthreads();

    // 2. Expand on tensor cores: hid = relu6(xs We^T + be) over the tile and its halo. Pixels
    //    outside the image get relu6(be) here; the depthwise reads zeros for them instead.
    if (a.expand) {
      const int m_tiles = p.in_rows / 16, h_tiles = p.hc / 16;
      for (int t = warp; t < m_tiles * h_tiles; t += kWarps) {
        const int m = t / h_tiles, j = t % h_tiles;
        typename Frags<T>::C c;
        wmma::load_matrix_sync(c, be + j * 16, p.hid_ld, wmma::mem_row_major);
        mma_rows<T>(c, xs + m * 16 * p.x_ld, p.x_ld, we + j * 16 * p.x_ld, p.x_ld, p.cin_pad);
        for (int e = 0; e < c.num_elements; ++e) c.x[e] = relu6(c.x[e]);
        wmma::store_matrix_sync(hid + m * 16 * p.hid_ld + j * 16, c, p.hid_ld, wmma::mem_row_major);
      }
    }
    __syncthreads();

    // 3. Depthwise 3x3 + bias + ReLU6 into the projection's A. Rows of pixels outside the image
    //    (a partial tile, the rounding to 16) are zeros.
    for (int i = tid; i < p.out_rows * p.hc; i += kThreads) {
      const int r = i / p.hc, c = i % p.hc;
      const int py = r / p.tw, px = r % p.tw;
      float v = 0.f;
      if (r < out_pixels && oy0 + py < a.oh && ox0 + px < a.ow) {
        v = wd[9 * p.hc + c];
        for (int dy = 0; dy < 3; ++dy)
          for (int dx = 0; dx < 3; ++dx) {
            const int ly = py * a.stride + dy, lx = px * a.stride + dx;
            if (inside(iy0 + ly, ix0 + lx)) v += wd[(dy * 3 + dx) * p.hc + c] * hid[(ly * p.in_w + lx) * p.hid_ld + c];
          }
        v = relu6(v);
      }
      dw[r * p.dw_ld + c] = from_float<T>(v);
    }
    __syncthreads();

    // 4. Project the chunk on tensor cores, accumulating in registers.
#pragma unroll
    for (int j = 0; j < kMaxAccPerWarp; ++j) {
      const int t = warp + j * kWarps;
      if (t < acc_tiles)
        mma_rows<T>(acc[j], dw + (t / n_tiles) * 16 * p.dw_ld, p.dw_ld, wp + (t % n_tiles) * 16 * p.dw_ld,
                    p.dw_ld, p.hc);
    }
    __syncthreads();  // the next chunk rewrites the weights and tiles read above
  }

  // 5. The accumulators through shared memory (the chunk buffers are free now), then out with the
  //    output channel fastest across threads: coalesced stores.
#pragma unroll
  for (int j = 0; j < kMaxAccPerWarp; ++j) {
    const int t = warp + j * kWarps;
    if (t < acc_tiles)
      wmma::store_matrix_sync(stage + (t / n_tiles) * 16 * p.stage_ld + (t % n_tiles) * 16, acc[j], p.stage_ld,
                              wmma::mem_row_major);
  }
  __syncthreads();
  for (int i = tid; i < out_pixels * p.cout_part; i += kThreads) {
    const int r = i / p.cout_part, c = i % p.cout_part;
    const int oy = oy0 + r / p.tw, ox = ox0 + r % p.tw, co = co0 + c;
    if (oy >= a.oh || ox >= a.ow || co >= a.cout) continue;
    const int64_t out = ((n * a.oh + oy) * a.ow + ox) * a.cout + co;
    float v = stage[r * p.stage_ld + c];
    if (p.splits > 1) {
      atomicAdd(a.partial + out, v);
      continue;
    }
    v += to_float(a.b_proj[co]);
    if (a.residual) v += to_float(xn[(int64_t(oy) * a.w + ox) * a.cin + co]);  // stride 1: the same pixel
    a.y[out] = from_float<T>(v);
  }
}

// With the hidden channels split over CTAs: y = the summed partial projections + bias (+ x).
template <typename T>
MNV2_GLOBAL(kThreads) finish_split_kernel(const KernelArgs<T> a) {
  const int64_t total = a.n * a.oh * a.ow * a.cout;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += int64_t(gridDim.x) * kThreads) {
    const int co = static_cast<int>(i % a.cout);
    float v = a.partial[i] + to_float(a.b_proj[co]);
    if (a.residual) v += to_float(a.x[i / a.cout * a.cin + co]);  // stride 1, Cin == Cout: the same pixel
    a.y[i] = from_float<T>(v);
  }
}

// Blocks of finish_split_kernel: enough to fill the GPU, each thread then loops.
inline int64_t finish_blocks(int64_t total, int sm_count) {
  const int64_t want = ceil_div(total, kThreads);
  const int64_t cap = int64_t(sm_count) * 8;
  return want < cap ? (want > 0 ? want : 1) : cap;
}

}  // namespace cuda
}  // namespace mnv2_fused
