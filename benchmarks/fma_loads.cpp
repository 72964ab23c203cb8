// How fast one core runs AVX-512 FMAs that read an operand from L1, against FMAs on registers:
// the limit of the kernel's loops that load about once per FMA (the depthwise's taps, the K = 16
// column kernel's broadcasts of A, the 1-vector-wide projections' tiles). 12 independent sums, the
// other operand in a register; the memory operand cycles through a few KiB (L1):
//
//   registers   both operands in registers (fma_peak's ceiling, with 12 sums)
//   vector      a 64-byte vector loaded by each FMA
//   broadcast   one float broadcast to the vector by each FMA
//
//   g++ -O3 -march=native benchmarks/fma_loads.cpp -o /tmp/fma_loads && /tmp/fma_loads
//
// Compare the three on the same run: the machine's spells move all of them.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(__AVX512F__)
namespace {

constexpr int kSums = 12;
constexpr int64_t kLines = 16;  // the memory operand's span: kLines groups of kSums vectors (12 KiB)

enum class Operand { kRegisters, kVector, kBroadcast };

template <Operand O>
__attribute__((noinline)) float run(const float* buf, int64_t steps) {
  __m512 sum[kSums];
  for (int i = 0; i < kSums; ++i) sum[i] = _mm512_set1_ps(float(i));
  const __m512 w = _mm512_set1_ps(1.0001f);
  __m512 x = _mm512_set1_ps(1e-3f);
  const float* p = buf;
  const float* const end = buf + kLines * kSums * 16;
  for (int64_t s = 0; s < steps; ++s) {
#pragma GCC unroll 12
    for (int i = 0; i < kSums; ++i) {
      __m512 a;
      if constexpr (O == Operand::kRegisters) a = x;
      else if constexpr (O == Operand::kVector) a = _mm512_load_ps(p + 16 * i);
      else a = _mm512_set1_ps(p[i]);
      sum[i] = _mm512_fmadd_ps(a, w, sum[i]);
    }
    if constexpr (O == Operand::kRegisters) __asm__("" : "+v"(x));  // not hoisted out of the loop
    p += kSums * 16;
    if (p == end) p = buf;
  }
  __m512 total = sum[0];
  for (int i = 1; i < kSums; ++i) total = _mm512_add_ps(total, sum[i]);
  return _mm512_reduce_add_ps(total);
}

template <Operand O>
double gflops(const float* buf) {
  const int64_t steps = 50000000;
  double best = 1e9;
  float sink = 0;
  for (int t = 0; t < 3; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    sink += run<O>(buf, steps);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  if (sink == 42.f) std::printf(" ");  // keeps the sums live
  return 2.0 * 16 * kSums * double(steps) / best * 1e-9;
}

}  // namespace

int main() {
  float* buf = static_cast<float*>(std::aligned_alloc(64, kLines * kSums * 16 * sizeof(float)));
  for (int64_t i = 0; i < kLines * kSums * 16; ++i) buf[i] = 1e-3f;
  const double reg = gflops<Operand::kRegisters>(buf);
  const double vec = gflops<Operand::kVector>(buf);
  const double bc = gflops<Operand::kBroadcast>(buf);
  std::printf("GFLOP/s on one core, %d independent sums\n", kSums);
  std::printf("registers  %7.1f\nvector     %7.1f  (%.2f of registers)\nbroadcast  %7.1f  (%.2f of registers)\n", reg,
              vec, vec / reg, bc, bc / reg);
  std::free(buf);
}
#else
int main() {
  std::printf("built without AVX-512 (-march=native on a CPU without it)\n");
  return 1;
}
#endif
