// The machine's fp32 FMA ceiling, for the "of peak" columns of benchmarks/summarize.py and
// benchmarks/stages.py: independent chains of 512-bit (AVX-512) or 256-bit FMAs per thread: as many
// as the registers hold next to the two operands, so that none is spilled (16 of AVX-512's 32, 12 of
// AVX2's 16).
//
//   g++ -O3 -march=native -pthread benchmarks/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
//
// prints the ceiling on 1 and on 2 threads; `fma_peak THREADS [ITERATIONS]` on THREADS only, with
// ITERATIONS steps of the chains (default 200000000, about 0.4 s on a 3 GHz core). The ceiling
// moves with a shared machine's spells (a 2-core Zen 3 guest read 181 and 205 GFLOP/s on two
// days), so stages.py --fma-peak measures it between its rounds.
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
using V = __m512;
constexpr int kChains = 16;
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define SUM _mm512_reduce_add_ps
#else
using V = __m256;
constexpr int kChains = 12;
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
static float SUM(V v) {
  float f[8];
  _mm256_storeu_ps(f, v);
  return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}
#endif

float chains(long iterations) {
  V a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = SET1(1.0f + i * 1e-7f);
  const V b = SET1(0.999999f), c = SET1(1e-7f);
  for (long it = 0; it < iterations; ++it)
    for (int i = 0; i < kChains; ++i) a[i] = FMA(a[i], b, c);
  float s = 0;
  for (int i = 0; i < kChains; ++i) s += SUM(a[i]);
  return s;  // used, so the loop is not removed
}

int main(int argc, char** argv) {
  std::vector<int> counts{1, 2};
  if (argc > 1) counts = {std::atoi(argv[1])};
  const long iterations = argc > 2 ? std::atol(argv[2]) : 200000000;
  if (counts[0] < 1 || iterations < 1) {
    std::fprintf(stderr, "usage: fma_peak [THREADS [ITERATIONS]], both positive\n");
    return 2;
  }
  const double flops_per_thread = double(iterations) * kChains * (sizeof(V) / sizeof(float)) * 2;
  for (int threads : counts) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    std::vector<float> out(threads);
    for (int t = 0; t < threads; ++t) pool.emplace_back([&out, t, iterations] { out[t] = chains(iterations); });
    for (auto& t : pool) t.join();
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%d thread(s): %.0f GFLOP/s (check %g)\n", threads, threads * flops_per_thread / sec / 1e9, out[0]);
  }
}
