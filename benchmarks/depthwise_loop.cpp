// How fast a 3x3 depthwise loop like the CPU kernel's (csrc/cpu/kernel_block.h, depthwise_k) runs on
// one core with AVX-512, its ring and output in L1 or L2: hc channels of a band of `rows` output
// rows and `cols` columns, one channel vector at a time across the band's pixels, the sums started
// from the bias and stored with ReLU6. The ways of walking the pixels:
//
//   1 pixel      one pixel a step, its 9 taps one chain of FMAs (the kernel's loop)
//   2, 4 pixels  that many pixels' chains interleaved, each tap read by its FMA
//   row sums     one pixel a step, a partial sum per kernel row (shorter chains, 2 more adds)
//   shared 4, 8  stride 1: that many neighbouring pixels a step, each kernel row's 3 + n - 1
//                columns loaded once into registers
//
//   g++ -O3 -march=native benchmarks/depthwise_loop.cpp -o /tmp/depthwise_loop && /tmp/depthwise_loop
//
// Compare with `fma_peak 1` (benchmarks/fma_peak.cpp). Each way's output is checked against the
// first's.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512F__)
namespace {

typedef float vec __attribute__((vector_size(64)));
vec load(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void store(float* p, vec v) { std::memcpy(p, &v, sizeof v); }
vec relu6(vec v) {
  return reinterpret_cast<vec>(_mm512_min_ps(_mm512_set1_ps(6.f), _mm512_max_ps(_mm512_setzero_ps(), reinterpret_cast<__m512>(v))));
}

struct Band {
  const float* ring;  // rows of ring_cols pixels, hc floats each
  int64_t ring_cols, rows, cols, hc, stride;
  const float* w;  // tap t of channel c at w[t * hc + c]
  const float* bias;
  float* out;  // pixel p = r * cols + q at out + p * hc
};

enum class Way { kOne, kTwo, kFour, kRowSums, kShared4, kShared8 };

// The band's sizes come as values: read through a reference, for all GCC knows the stores change them.
template <int N>
__attribute__((always_inline)) inline int64_t interleaved(int64_t cols, int64_t ld, int64_t s, const float* const* rp,
                                                          const vec* wt, vec bias, float* o, int64_t q) {
  for (; q + N <= cols; q += N) {
    vec v[N];
    for (int u = 0; u < N; ++u) v[u] = bias;
    for (int ky = 0; ky < 3; ++ky)
      for (int kx = 0; kx < 3; ++kx)
        for (int u = 0; u < N; ++u) v[u] += load(rp[ky] + ((q + u) * s + kx) * ld) * wt[ky * 3 + kx];
    for (int u = 0; u < N; ++u) store(o + (q + u) * ld, relu6(v[u]));
  }
  return q;
}

template <int N>
__attribute__((always_inline)) inline int64_t shared(int64_t cols, int64_t ld, const float* const* rp, const vec* wt,
                                                     vec bias, float* o, int64_t q) {
  for (; q + N <= cols; q += N) {
    vec v[N];
    for (int u = 0; u < N; ++u) v[u] = bias;
    for (int ky = 0; ky < 3; ++ky) {
      vec x[N + 2];
      for (int j = 0; j < N + 2; ++j) x[j] = load(rp[ky] + (q + j) * ld);
      for (int kx = 0; kx < 3; ++kx)
        for (int u = 0; u < N; ++u) v[u] += x[u + kx] * wt[ky * 3 + kx];
    }
    for (int u = 0; u < N; ++u) store(o + (q + u) * ld, relu6(v[u]));
  }
  return q;
}

template <Way W>
__attribute__((noinline)) void depthwise(const Band& b) {
  const int64_t ld = b.hc, row_floats = b.ring_cols * ld, s = b.stride, rows = b.rows, cols = b.cols;
  const float* const ring = b.ring;
  float* const out = b.out;
  for (int64_t cv = 0; cv < ld; cv += 16) {
    vec wt[9];
    for (int t = 0; t < 9; ++t) wt[t] = load(b.w + t * ld + cv);
    const vec bias = load(b.bias + cv);
    for (int64_t r = 0; r < rows; ++r) {
      const float* rp[3];
      for (int ky = 0; ky < 3; ++ky) rp[ky] = ring + (r * s + ky) * row_floats + cv;
      float* o = out + r * cols * ld + cv;
      int64_t q = 0;
      if constexpr (W == Way::kTwo) q = interleaved<2>(cols, ld, s, rp, wt, bias, o, q);
      if constexpr (W == Way::kFour) q = interleaved<4>(cols, ld, s, rp, wt, bias, o, q);
      if constexpr (W == Way::kShared4) q = shared<4>(cols, ld, rp, wt, bias, o, q);
      if constexpr (W == Way::kShared8) q = shared<8>(cols, ld, rp, wt, bias, o, q);
      if constexpr (W == Way::kRowSums) {
        for (; q < cols; ++q) {
          vec p[3];
          for (int ky = 0; ky < 3; ++ky) {
            p[ky] = load(rp[ky] + q * s * ld) * wt[ky * 3];
            for (int kx = 1; kx < 3; ++kx) p[ky] += load(rp[ky] + (q * s + kx) * ld) * wt[ky * 3 + kx];
          }
          store(o + q * ld, relu6((p[0] + bias) + (p[1] + p[2])));
        }
      }
      q = interleaved<1>(cols, ld, s, rp, wt, bias, o, q);
    }
  }
}

float* aligned_floats(int64_t n) { return static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64)); }

// GFLOP/s of `way` on the band, or -1 where its output differs from `expected` (then filled in).
template <Way W>
double gflops(Band b, float* expected) {
  const int64_t out_floats = b.rows * b.cols * b.hc;
  const int reps = static_cast<int>(std::max<int64_t>(1, 20000000 / (out_floats * 9)));
  double best = 1e9;
  for (int t = 0; t < 9; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int n = 0; n < reps; ++n) depthwise<W>(b);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (W == Way::kOne) {
    std::memcpy(expected, b.out, out_floats * sizeof(float));
  } else {
    for (int64_t i = 0; i < out_floats; ++i)
      if (std::fabs(expected[i] - b.out[i]) > 1e-4f * (1.f + std::fabs(expected[i]))) return -1;
  }
  return 2.0 * 9 * double(out_floats) * reps / best * 1e-9;
}

}  // namespace

int main() {
  struct Case {
    int64_t hc, rows, cols, stride;
  };
  // Bands of MobileNetV2's blocks at batch 1 (hidden channels, output rows and columns, stride).
  const Case cases[] = {{96, 2, 56, 2}, {144, 2, 56, 1}, {192, 4, 28, 1}, {384, 2, 14, 1},
                        {576, 2, 14, 1}, {960, 2, 7, 1},  {16, 4, 56, 1},  {64, 4, 14, 1}};
  std::printf("GFLOP/s on one core (-1: wrong output)\n%-26s %8s %8s %8s %8s %9s %9s\n", "channels, rows x cols",
              "1 pixel", "2", "4", "row sums", "shared 4", "shared 8");
  for (const Case& c : cases) {
    Band b{};
    b.hc = c.hc, b.rows = c.rows, b.cols = c.cols, b.stride = c.stride;
    b.ring_cols = (c.cols - 1) * c.stride + 3;
    const int64_t ring_floats = ((c.rows - 1) * c.stride + 3) * b.ring_cols * c.hc;
    float* ring = aligned_floats(ring_floats);
    float* w = aligned_floats(9 * c.hc);
    float* bias = aligned_floats(c.hc);
    float* out = aligned_floats(c.rows * c.cols * c.hc);
    float* expected = aligned_floats(c.rows * c.cols * c.hc);
    for (int64_t i = 0; i < ring_floats; ++i) ring[i] = float(i % 13) * 0.1f - 0.5f;
    for (int64_t i = 0; i < 9 * c.hc; ++i) w[i] = float(i % 7) * 0.1f - 0.3f;
    for (int64_t i = 0; i < c.hc; ++i) bias[i] = 0.1f;
    b.ring = ring, b.w = w, b.bias = bias, b.out = out;
    char name[64];
    std::snprintf(name, sizeof name, "%ld, %ld x %ld, stride %ld", long(c.hc), long(c.rows), long(c.cols), long(c.stride));
    const double one = gflops<Way::kOne>(b, expected);
    const double two = gflops<Way::kTwo>(b, expected), four = gflops<Way::kFour>(b, expected);
    const double rows = gflops<Way::kRowSums>(b, expected);
    const double s4 = c.stride == 1 ? gflops<Way::kShared4>(b, expected) : 0;
    const double s8 = c.stride == 1 ? gflops<Way::kShared8>(b, expected) : 0;
    std::printf("%-26s %8.1f %8.1f %8.1f %8.1f %9.1f %9.1f\n", name, one, two, four, rows, s4, s8);
    std::free(ring), std::free(w), std::free(bias), std::free(out), std::free(expected);
  }
}
#else
int main() {
  std::printf("built without AVX-512 (-march=native on a CPU without it)\n");
  return 1;
}
#endif
