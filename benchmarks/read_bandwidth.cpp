// How fast each core reads memory it does not hold in its L2 cache: the rate at which a batch-1
// forward can stream the weights of its later stages (MobileNetV2 reads about 14 MB of weights a
// forward; its 7x7 and 14x14 blocks, the head and the classifier read theirs once each). Every
// thread sums its own buffer of the given size, front to back, again and again, and the best pass
// of each size is printed; a buffer larger than the L2 cache but within the last-level cache is
// read from that, one larger than both from memory. Each size is also read with software prefetches
// a few KiB ahead of the loads (into L2), as a kernel could issue them.
//
//   g++ -O3 -march=native -pthread benchmarks/read_bandwidth.cpp -o /tmp/read_bandwidth
//   /tmp/read_bandwidth [threads] [MiB ...]      (default: 1 thread; 1, 8, 16 and 64 MiB)
//
// Compare sizes within one run: the machine's spells move all of them.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#if defined(__AVX512F__)
namespace {

constexpr int kPasses = 7;
constexpr int64_t kAhead = 4096;  // bytes between a prefetch and the load it is for

// Sums the buffer with whole-line loads; seconds taken.
template <bool kPrefetch>
double sum_pass(const float* buf, int64_t floats, float* sink) {
  const auto t0 = std::chrono::steady_clock::now();
  __m512 a = _mm512_setzero_ps(), b = a, c = a, d = a;
  for (int64_t i = 0; i < floats; i += 64) {
    if constexpr (kPrefetch) {
      const char* ahead = reinterpret_cast<const char*>(buf + i) + kAhead;
      for (int l = 0; l < 4; ++l) _mm_prefetch(ahead + l * 64, _MM_HINT_T1);
    }
    a = _mm512_add_ps(a, _mm512_load_ps(buf + i));
    b = _mm512_add_ps(b, _mm512_load_ps(buf + i + 16));
    c = _mm512_add_ps(c, _mm512_load_ps(buf + i + 32));
    d = _mm512_add_ps(d, _mm512_load_ps(buf + i + 48));
  }
  *sink = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// GB/s per thread: the best of kPasses passes, every thread reading its own buffer at once.
template <bool kPrefetch>
double per_thread_rate(const std::vector<float*>& buffers, int64_t floats) {
  double best = 0;
  for (int pass = 0; pass < kPasses; ++pass) {
    std::vector<double> seconds(buffers.size());
    std::vector<float> sinks(buffers.size());
    std::vector<std::thread> threads;
    for (size_t t = 0; t < buffers.size(); ++t)
      threads.emplace_back([&, t] { seconds[t] = sum_pass<kPrefetch>(buffers[t], floats, &sinks[t]); });
    for (std::thread& t : threads) t.join();
    const double slowest = *std::max_element(seconds.begin(), seconds.end());
    best = std::max(best, static_cast<double>(floats) * sizeof(float) / slowest / 1e9);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  std::vector<int64_t> sizes;
  for (int i = 2; i < argc; ++i) sizes.push_back(std::atoll(argv[i]));
  if (sizes.empty()) sizes = {1, 8, 16, 64};
  if (threads < 1 || std::any_of(sizes.begin(), sizes.end(), [](int64_t s) { return s < 1; })) {
    std::fprintf(stderr, "usage: %s [threads >= 1] [MiB >= 1 ...]\n", argv[0]);
    return 2;
  }
  std::printf("%d thread(s), GB/s per thread, best of %d passes\n", threads, kPasses);
  std::printf("%8s %12s %16s\n", "MiB", "loads", "with prefetch");
  for (const int64_t mib : sizes) {
    const int64_t floats = mib * 1024 * 1024 / 4;
    std::vector<float*> buffers;
    for (int t = 0; t < threads; ++t) {
      auto* b = static_cast<float*>(std::aligned_alloc(64, floats * sizeof(float)));
      if (b == nullptr) {
        std::fprintf(stderr, "could not allocate %lld MiB\n", static_cast<long long>(mib));
        return 1;
      }
      std::fill_n(b, floats, 1.f);
      buffers.push_back(b);
    }
    const double plain = per_thread_rate<false>(buffers, floats);
    const double ahead = per_thread_rate<true>(buffers, floats);
    std::printf("%8lld %12.1f %16.1f\n", static_cast<long long>(mib), plain, ahead);
    for (float* b : buffers) std::free(b);
  }
  return 0;
}
#else
int main() {
  std::fprintf(stderr, "read_bandwidth: needs AVX-512 (build with -march=native on such a CPU)\n");
  return 1;
}
#endif
