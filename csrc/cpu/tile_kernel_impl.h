// The body of run_tile, compiled once per instruction set. The including file defines
//   MNV2_TILE_FN  the function's name
//   MNV2_MR       rows of the GEMM micro-tile (how many accumulators the register file holds)
// after any `#pragma GCC target`, and includes nothing else after it.
#include <algorithm>
#include <cstring>

namespace mnv2_fused {
namespace cpu {
namespace {

// 16 floats; the compiler splits it into whatever registers the target has.
typedef float v16 __attribute__((vector_size(64)));
constexpr int kNV = kPanel / 16;  // v16 per panel row

inline v16 load16(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
// A braced list (not v16{} + s, which costs an add per call without -ffast-math).
inline v16 splat(float s) { return v16{s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

// ReLU6 that keeps NaN: comparisons with NaN are false, so it passes through unchanged.
inline float relu6(float v) { return v < 0.f ? 0.f : (v > 6.f ? 6.f : v); }
inline v16 relu6(v16 v) {
  const v16 zero = splat(0.f), six = splat(6.f);
  v = v < zero ? zero : v;
  return v > six ? six : v;
}

enum class Epilogue { kBiasRelu6, kAccumulate, kBias };

// C[m, 0:kPanel] (op)= sum_k A[m, k] * B[k, 0:kPanel] for m < MR; rows >= m_valid repeat the last
// valid row of A (never read past A) and are not stored.
template <Epilogue E>
inline void micro_tile(const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                       int64_t ldc, int64_t K, const float* bias, int m_valid) {
  constexpr int MR = MNV2_MR;
  const float* a_row[MR];
  for (int i = 0; i < MR; ++i) a_row[i] = A + std::min(i, m_valid - 1) * lda;
  v16 acc[MR][kNV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < kNV; ++j) {
      if (E == Epilogue::kAccumulate)
        acc[i][j] = i < m_valid ? load16(C + i * ldc + 16 * j) : splat(0.f);
      else
        acc[i][j] = splat(bias[std::min(i, m_valid - 1)]);
    }
  for (int64_t k = 0; k < K; ++k) {
    v16 b[kNV];
    for (int j = 0; j < kNV; ++j) b[j] = load16(B + k * ldb + 16 * j);
    for (int i = 0; i < MR; ++i) {
      const v16 a = splat(a_row[i][k]);
      for (int j = 0; j < kNV; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int i = 0; i < MR; ++i) {
    if (i >= m_valid) break;
    for (int j = 0; j < kNV; ++j)
      store16(C + i * ldc + 16 * j, E == Epilogue::kBiasRelu6 ? relu6(acc[i][j]) : acc[i][j]);
  }
}

// C[M, N] (op)= A[M, K] B[K, N], N rounded up to whole panels (buffers are padded for it).
template <Epilogue E>
void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
          float* C, int64_t ldc, const float* bias) {
  constexpr int MR = MNV2_MR;
  for (int64_t j = 0; j < N; j += kPanel)
    for (int64_t i = 0; i < M; i += MR)
      micro_tile<E>(A + i * lda, lda, B + j, ldb, C + i * ldc + j, ldc, K, bias ? bias + i : nullptr,
                    static_cast<int>(std::min<int64_t>(MR, M - i)));
}

// Column of input pixel x inside a packed row: stride 2 stores odd columns first, then even ones.
inline int64_t packed_col(int64_t x, int64_t w, int64_t stride) {
  return stride == 1 ? x : (x & 1 ? x >> 1 : (w >> 1) + (x >> 1));
}

// dst[c * ld + i * w + packed_col(x)] = X[n, c0 + c, ih0 + i, x] for rows inside the image;
// rows outside the image are zero (the depthwise padding).
void pack_rows(const BlockArgs& a, int64_t n, int64_t c0, int64_t channels, int64_t ih0, int64_t rows,
               float* dst, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t ih = ih0 + i;
    const bool inside = ih >= 0 && ih < a.h;
    for (int64_t c = 0; c < channels; ++c) {
      float* d = dst + c * ld + i * a.w;
      if (!inside) {
        std::memset(d, 0, sizeof(float) * a.w);
        continue;
      }
      const float* s = a.x + n * a.sxn + (c0 + c) * a.sxc + ih * a.sxh;
      if (a.stride == 1 && a.sxw == 1) {
        std::memcpy(d, s, sizeof(float) * a.w);
      } else {
        for (int64_t x = 0; x < a.w; ++x) d[packed_col(x, a.w, a.stride)] = s[x * a.sxw];
      }
    }
  }
}

// Depthwise 3x3 + bias + ReLU6 of one hidden channel over the tile.
// hid: rows_in packed rows of width w; out: rows_out rows of width ow.
void depthwise(const BlockArgs& a, int64_t rows_out, const float* hid, const float* k9, float bias,
               float* out) {
  const int64_t w = a.w, ow = a.ow;
  for (int64_t r = 0; r < rows_out; ++r) {
    const float* rows[3];
    for (int dy = 0; dy < 3; ++dy) rows[dy] = hid + (r * a.stride + dy) * w;
    float* o = out + r * ow;
    if (a.stride == 1) {
      // Border columns see the zero padding; the interior loop needs no checks and vectorizes.
      for (int64_t q : {int64_t(0), ow - 1}) {
        float s = bias;
        for (int dy = 0; dy < 3; ++dy)
          for (int dx = 0; dx < 3; ++dx) {
            const int64_t x = q + dx - 1;
            if (x >= 0 && x < w) s += k9[dy * 3 + dx] * rows[dy][x];
          }
        o[q] = relu6(s);
      }
      const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2];
      for (int64_t q = 1; q < ow - 1; ++q) {
        float s = bias + k9[0] * r0[q - 1] + k9[1] * r0[q] + k9[2] * r0[q + 1];
        s += k9[3] * r1[q - 1] + k9[4] * r1[q] + k9[5] * r1[q + 1];
        s += k9[6] * r2[q - 1] + k9[7] * r2[q] + k9[8] * r2[q + 1];
        o[q] = relu6(s);
      }
    } else {
      // Packed row: odd columns O[0..no) then even columns E[0..ow). Output q reads
      // O[q-1] (left), E[q] (centre), O[q] (right); the missing ones are the zero padding.
      const int64_t no = w >> 1;
      const int64_t inner_end = std::min(no, ow);
      for (int64_t q = 0; q < ow; q = (q == 0 && inner_end > 1) ? inner_end : q + 1) {
        float s = bias;
        for (int dy = 0; dy < 3; ++dy) {
          const float* odd = rows[dy];
          const float* even = rows[dy] + no;
          if (q >= 1) s += k9[dy * 3] * odd[q - 1];
          s += k9[dy * 3 + 1] * even[q];
          if (q < no) s += k9[dy * 3 + 2] * odd[q];
        }
        o[q] = relu6(s);
      }
      const float *o0 = rows[0], *o1 = rows[1], *o2 = rows[2];
      const float *e0 = o0 + no, *e1 = o1 + no, *e2 = o2 + no;
      for (int64_t q = 1; q < inner_end; ++q) {
        float s = bias + k9[0] * o0[q - 1] + k9[1] * e0[q] + k9[2] * o0[q];
        s += k9[3] * o1[q - 1] + k9[4] * e1[q] + k9[5] * o1[q];
        s += k9[6] * o2[q - 1] + k9[7] * e2[q] + k9[8] * o2[q];
        o[q] = relu6(s);
      }
    }
  }
}

}  // namespace

void MNV2_TILE_FN(const BlockArgs& a, const TilePlan& p, int64_t n, int64_t r0, float* scratch) {
  const int64_t rows_out = std::min(p.rows_out, a.oh - r0);
  const int64_t rows_in = (rows_out - 1) * a.stride + 3;
  const int64_t ih0 = r0 * a.stride - 1;  // first input row of the tile (may be the padding row)
  // Input rows inside the image: [lo, hi) relative to ih0.
  const int64_t lo = std::max<int64_t>(0, -ih0);
  const int64_t hi = std::min(rows_in, a.h - ih0);
  const int64_t p_out = rows_out * a.ow;
  float* xpack = scratch;
  float* hid = scratch + p.off_hidden;
  float* dw = scratch + p.off_dw;
  float* acc = scratch + p.off_acc;

  if (a.w_expand) pack_rows(a, n, 0, a.cin, ih0, rows_in, xpack, p.ld_in);
  for (int64_t h0 = 0; h0 < a.hidden; h0 += p.chunk) {
    const int64_t hc = std::min(p.chunk, a.hidden - h0);
    if (a.w_expand) {
      // Expand only the rows inside the image, then zero the padding rows (the GEMM's last panel
      // may have spilled into them).
      gemm<Epilogue::kBiasRelu6>(hc, (hi - lo) * a.w, a.cin, a.w_expand + h0 * a.cin, a.cin,
                                 xpack + lo * a.w, p.ld_in, hid + lo * a.w, p.ld_in, a.b_expand + h0);
      for (int64_t c = 0; c < hc; ++c) {
        if (lo > 0) std::memset(hid + c * p.ld_in, 0, sizeof(float) * lo * a.w);
        if (hi < rows_in) std::memset(hid + c * p.ld_in + hi * a.w, 0, sizeof(float) * (rows_in - hi) * a.w);
      }
    } else {
      pack_rows(a, n, h0, hc, ih0, rows_in, hid, p.ld_in);
    }
    for (int64_t c = 0; c < hc; ++c)
      depthwise(a, rows_out, hid + c * p.ld_in, a.w_dw + (h0 + c) * 9, a.b_dw[h0 + c], dw + c * p.ld_out);
    if (h0 == 0)
      gemm<Epilogue::kBias>(a.cout, p_out, hc, a.w_proj, a.hidden, dw, p.ld_out, acc, p.ld_out, a.b_proj);
    else
      gemm<Epilogue::kAccumulate>(a.cout, p_out, hc, a.w_proj + h0, a.hidden, dw, p.ld_out, acc, p.ld_out,
                                  nullptr);
  }

  // Epilogue: residual and the store, in whichever order walks the output contiguously.
  const float* xr = a.x + n * a.sxn + r0 * a.sxh;
  float* yr = a.y + n * a.syn + r0 * a.syh;
  if (a.syw == 1) {
    for (int64_t o = 0; o < a.cout; ++o)
      for (int64_t r = 0; r < rows_out; ++r)
        for (int64_t q = 0; q < a.ow; ++q) {
          float v = acc[o * p.ld_out + r * a.ow + q];
          if (a.residual) v += xr[o * a.sxc + r * a.sxh + q * a.sxw];
          yr[o * a.syc + r * a.syh + q] = v;
        }
  } else {
    for (int64_t r = 0; r < rows_out; ++r)
      for (int64_t q = 0; q < a.ow; ++q)
        for (int64_t o = 0; o < a.cout; ++o) {
          float v = acc[o * p.ld_out + r * a.ow + q];
          if (a.residual) v += xr[o * a.sxc + r * a.sxh + q * a.sxw];
          yr[o * a.syc + r * a.syh + q * a.syw] = v;
        }
  }
}

}  // namespace cpu
}  // namespace mnv2_fused
