// How fast the CPU kernel's own AVX-512 GEMM micro-tiles (csrc/cpu/kernel_gemm.h, micro_tile) run on
// one core, data in L1: M rows of A times a packed B of K rows and NV vectors of 16 columns, the
// sums started from the bias and stored plainly or with ReLU6, as the blocks' expands and
// projections store them. Buffers 64-byte aligned, as PyTorch's are (unaligned, every B load
// splits a cache line: 5-15% slower). Compare with `fma_peak 1` (benchmarks/fma_peak.cpp):
//
//   TORCH=$(python -c "import torch, os; print(os.path.dirname(torch.__file__))")
//   g++ -O3 -std=c++17 -Icsrc/cpu -I$TORCH/include benchmarks/micro_tile.cpp csrc/cpu/zero_floats.cpp \
//       -L$TORCH/lib -lc10 -Wl,-rpath,$TORCH/lib -o /tmp/micro_tile && /tmp/micro_tile
//
// (from the repository root; the kernel's translation unit is included whole, so the tiles are
// the ones the extension compiles). Prints GFLOP/s per shape and K.
#include "tile_kernel_avx512.cpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__)
using namespace mnv2_fused;
using namespace mnv2_fused::cpu;

namespace {

float* aligned_floats(int64_t n, float value) {
  float* p = static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64));
  for (int64_t i = 0; i < n; ++i) p[i] = value + float(i % 7) * 0.01f;
  return p;
}

template <int NV, int MR, Act A>
double gflops(int K, int M) {
  float* b = aligned_floats(kPackedColumns * K * NV, 0.01f);
  float* a = aligned_floats(int64_t(M) * K, 0.02f);
  float* c = aligned_floats(int64_t(M) * NV * 16, 0.f);
  float* bias = aligned_floats(NV * 16, 0.1f);
  const float* a_rows[64];
  float* c_rows[64];
  for (int i = 0; i < M; ++i) a_rows[i] = a + i * K, c_rows[i] = c + i * NV * 16;
  Gemm g;
  g.set_weights(b, true, K, 0, K, NV * 16, 0);
  g.a = a_rows, g.c = c_rows, g.bias = bias, g.store = Store::kAct, g.act = A;
  const float* bcols[NV];
  for (int j = 0; j < NV; ++j) bcols[j] = b_column(g, j * 16);
  const int reps = std::max(1, 4000000 / (K * M));
  double best = 1e9;
  for (int t = 0; t < 7; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int n = 0; n < reps; ++n)
      for (int i = 0; i + MR <= M; i += MR) micro_tile<NV, MR, false, A, false, Tail::kWhole>(g, bcols, i, 0, NV * 16);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::free(b), std::free(a), std::free(c), std::free(bias);
  return 2.0 * (M / MR * MR) * NV * 16 * double(K) * reps / best * 1e-9;
}

}  // namespace

int main() {
  if (!__builtin_cpu_supports("avx512f")) {
    std::printf("this CPU has no AVX-512\n");
    return 1;
  }
  std::printf("GFLOP/s on one core, 48 rows (A, B and C in a 48 KiB L1 up to K = 64)\n");
  std::printf("%5s %12s %12s %12s %12s\n", "K", "4x6 relu6", "4x6 plain", "3x8 plain", "2x8 plain");
  for (int K : {16, 24, 32, 64, 96, 144, 320})
    std::printf("%5d %12.1f %12.1f %12.1f %12.1f\n", K, gflops<4, 6, Act::kReLU6>(K, 48),
                gflops<4, 6, Act::kNone>(K, 48), gflops<3, 8, Act::kNone>(K, 48), gflops<2, 8, Act::kNone>(K, 48));
}
#else
int main() { return 1; }
#endif
