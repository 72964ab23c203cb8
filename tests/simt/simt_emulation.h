// A small SIMT emulation, for the tests only: CUDA's execution model on the CPU, so that the CUDA
// kernel's own source (csrc/cuda/inverted_residual_kernel.cuh) runs and is checked on a machine
// without a GPU.
//
// - A launch runs its blocks one after another. A block's threads are coroutines (ucontext) on one
//   CPU thread that run ONE AT A TIME, each up to its next __syncthreads, in an order that changes
//   every barrier phase (shuffled by a seed, or forward / reverse). So a missing barrier is not a
//   timing accident but a certain read of data no thread has written yet (shared memory starts
//   every block filled with NaN) or has already overwritten. Every __syncthreads site can be
//   switched off by its line number (Config::skip_barrier_line): the tests delete each one in turn
//   and expect a failure.
// - WMMA fragments hold the whole tile in every thread: the kernel can only reach their contents
//   through num_elements / x[] with operations that treat every element alike, so no layout the
//   kernel might assume is shared with this emulation. load / store / mma check what the hardware
//   requires (32-byte aligned pointers, ldm a multiple of 16 bytes, tiles inside shared memory).
//   TF32 products read only TF32's bits of their operands, as the tensor cores do.
// - __half and __nv_bfloat16 are the CUDA toolkit's own host implementations.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

// The toolkit's host headers define these as attributes GCC does not know; the emulation needs none.
#undef __device__
#undef __global__
#undef __launch_bounds__
#undef __forceinline__
#define __device__
#define __forceinline__ inline

#define MNV2_DEVICE inline
#define MNV2_GLOBAL(threads) void
#define MNV2_DYNAMIC_SHARED(name) unsigned char* name = ::simt::dynamic_shared()

namespace simt {

enum class Order { kShuffle = 0, kForward = 1, kReverse = 2 };

struct Config {
  Order order = Order::kShuffle;
  unsigned seed = 1;
  int skip_barrier_line = -1;  // a __syncthreads on this line of the kernel source does nothing
};

// Stack of each emulated thread: the kernel's frames hold whole-tile fragments (about 20 KiB).
constexpr size_t kStackBytes = 256 * 1024;

// The launch in flight (one at a time).
struct Launch {
  Config config;
  dim3 grid, block;
  uint3 block_idx, thread_idx;
  std::vector<unsigned char> smem_storage;
  unsigned char* smem = nullptr;  // 128-byte aligned, as CUDA's dynamic shared memory
  size_t smem_bytes = 0;
  std::string error;  // the first violation seen
  int threads = 0, running = 0;
  std::vector<ucontext_t> context;
  std::unique_ptr<char[]> stacks;
  std::vector<char> finished;  // per thread: its body returned in this block
  ucontext_t scheduler;
  std::function<void()> body;
};

inline Launch*& current() {
  static Launch* launch = nullptr;
  return launch;
}

inline void fail(const std::string& what) {
  if (current()->error.empty()) current()->error = what;
}

inline unsigned char* dynamic_shared() { return current()->smem; }

// A thread's whole life in a block; returning resumes the scheduler (uc_link).
inline void run_body() {
  current()->body();
  current()->finished[current()->running] = 1;
}

inline void syncthreads(int line) {
  Launch& L = *current();
  if (line == L.config.skip_barrier_line) return;
  swapcontext(&L.context[L.running], &L.scheduler);
}

// Runs body() as every thread of every block of grid x block, with `smem_bytes` of dynamic shared
// memory; returns the first violation seen, or "".
inline std::string launch(dim3 grid, dim3 block, size_t smem_bytes, const Config& config, std::function<void()> body) {
  Launch L;
  L.config = config;
  L.grid = grid, L.block = block;
  L.threads = static_cast<int>(block.x * block.y * block.z);
  L.smem_storage.assign(smem_bytes + 128, 0xFF);
  L.smem = L.smem_storage.data() + (128 - reinterpret_cast<uintptr_t>(L.smem_storage.data()) % 128) % 128;
  L.smem_bytes = smem_bytes;
  L.body = std::move(body);
  L.context.resize(L.threads);
  L.stacks.reset(new char[kStackBytes * L.threads]);
  current() = &L;
  std::mt19937 rng(config.seed);
  std::vector<int> order(L.threads);
  std::vector<char>& finished = L.finished;
  finished.resize(L.threads);
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  for (int64_t b = 0; b < blocks; ++b) {
    L.block_idx.x = static_cast<unsigned>(b % grid.x);
    L.block_idx.y = static_cast<unsigned>(b / grid.x % grid.y);
    L.block_idx.z = static_cast<unsigned>(b / (int64_t(grid.x) * grid.y));
    std::fill(L.smem, L.smem + smem_bytes, 0xFF);  // NaN as float, half and bfloat16
    for (int i = 0; i < L.threads; ++i) {
      getcontext(&L.context[i]);
      L.context[i].uc_stack.ss_sp = L.stacks.get() + kStackBytes * i;
      L.context[i].uc_stack.ss_size = kStackBytes;
      L.context[i].uc_link = &L.scheduler;
      makecontext(&L.context[i], run_body, 0);
    }
    std::fill(finished.begin(), finished.end(), 0);
    // Phases: every thread not finished runs up to its next barrier (or its end), one at a time.
    for (int alive = L.threads; alive > 0;) {
      for (int i = 0; i < L.threads; ++i) order[i] = i;
      if (config.order == Order::kReverse) std::reverse(order.begin(), order.end());
      if (config.order == Order::kShuffle) std::shuffle(order.begin(), order.end(), rng);
      for (int t : order) {
        if (finished[t]) continue;
        L.running = t;
        L.thread_idx.x = static_cast<unsigned>(t % block.x);
        L.thread_idx.y = static_cast<unsigned>(t / block.x % block.y);
        L.thread_idx.z = static_cast<unsigned>(t / (block.x * block.y));
        swapcontext(&L.scheduler, &L.context[t]);  // back at its next barrier, or at its end
      }
      alive = 0;
      for (int i = 0; i < L.threads; ++i) alive += !finished[i];
    }
  }
  current() = nullptr;
  return L.error;
}

// 16-byte copies; the alignment CUDA requires of them is checked.
inline void copy16(void* dst, const void* src) {
  if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16) fail("copy16: not 16-byte aligned");
  std::memcpy(dst, src, 16);
}
inline void zero16(void* dst) {
  if (reinterpret_cast<uintptr_t>(dst) % 16) fail("zero16: not 16-byte aligned");
  std::memset(dst, 0, 16);
}

// One thread at a time: read-modify-write needs no atomicity here.
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}

}  // namespace simt

#define __syncthreads() ::simt::syncthreads(__LINE__)
#define threadIdx (::simt::current()->thread_idx)
#define blockIdx (::simt::current()->block_idx)
#define blockDim (::simt::current()->block)
#define gridDim (::simt::current()->grid)
using simt::atomicAdd;
using simt::copy16;
using simt::zero16;

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision
enum layout_t { mem_row_major, mem_col_major };

// TF32 keeps 10 of fp32's 23 mantissa bits; conversion rounds to nearest, ties away from zero.
inline float __float_to_tf32(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7F800000u) != 0x7F800000u) u = (u + 0x1000u) & ~0x1FFFu;
  std::memcpy(&v, &u, 4);
  return v;
}

// What a tensor core reads of a TF32 operand: the upper bits only.
inline float tf32_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= ~0x1FFFu;
  std::memcpy(&v, &u, 4);
  return v;
}

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  using element_type = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;
  static constexpr int num_elements = rows * cols;
  element_type x[num_elements];
  element_type& at(int r, int c) { return x[r * cols + c]; }
  const element_type& at(int r, int c) const { return x[r * cols + c]; }
};

inline float as_float(float v) { return v; }
inline float as_float(__half v) { return __half2float(v); }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Pointer and leading-dimension rules of the hardware, and tiles that stay inside shared memory.
template <typename E>
void check_tile(const E* p, unsigned ldm, int rows, int cols, bool row_major, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) simt::fail(std::string(what) + ": pointer not 32-byte aligned");
  if ((ldm * sizeof(E)) % 16 != 0) simt::fail(std::string(what) + ": ldm not a multiple of 16 bytes");
  const unsigned char* base = simt::current()->smem;
  const unsigned char* end = base + simt::current()->smem_bytes;
  const auto* b = reinterpret_cast<const unsigned char*>(p);
  if (b >= base && b < end) {
    const int64_t span = (row_major ? int64_t(rows - 1) * ldm + cols : int64_t(cols - 1) * ldm + rows);
    if (b + span * sizeof(E) > end) simt::fail(std::string(what) + ": tile runs past shared memory");
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename E>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const E* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool row = std::is_same_v<Layout, row_major>;
  check_tile(p, ldm, F::rows, F::cols, row, "load_matrix_sync");
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.at(r, c) = row ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const float* p, unsigned ldm, layout_t layout) {
  check_tile(p, ldm, M, N, layout == mem_row_major, "load_matrix_sync (accumulator)");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) f.at(r, c) = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
}

template <int M, int N, int K>
void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  check_tile(p, ldm, M, N, layout == mem_row_major, "store_matrix_sync");
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.at(r, c);
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float v) {
  for (auto& e : f.x) e = static_cast<typename fragment<Use, M, N, K, T, Layout>::element_type>(v);
}

// d = a b + c, products of the operands' values (TF32: their TF32 bits) summed in fp32.
template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  constexpr bool tf32 = std::is_same_v<T, precision::tf32>;
  float fa[M][K], fb[K][N];
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) fa[i][k] = tf32 ? tf32_bits(as_float(a.at(i, k))) : as_float(a.at(i, k));
  for (int k = 0; k < K; ++k)
    for (int j = 0; j < N; ++j) fb[k][j] = tf32 ? tf32_bits(as_float(b.at(k, j))) : as_float(b.at(k, j));
  float out[M][N];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) out[i][j] = c.at(i, j);
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < N; ++j) out[i][j] += fa[i][k] * fb[k][j];
  }
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) d.at(i, j) = out[i][j];
}

}  // namespace wmma
}  // namespace nvcuda
