// How fast the k-loop of each AVX2 GEMM micro-tile shape runs on one core, data in L1: a panel of
// 48 rows x 96 columns, K from 16 to 144, B packed in groups of 16 columns as the CPU kernel packs
// it, the sums started from a bias and stored with ReLU6. The k-loops are written in assembly so
// that the figures are the instruction mixes', not one compiler's register allocation:
//
//   3x4 3+1    3 rows x 4 vectors, three of B's vectors in registers and one read in every FMA:
//              what GCC makes of the kernel's AVX2 tile (12 accumulators, the broadcast, 3 of B)
//   3x4 2+2    two of B's vectors in registers and two read in every FMA: the kernel's tile while
//              GCC kept a constant of the store's ReLU6 in a register through the k-loop
//   3x4 mem    3 rows x 4 vectors, every FMA reading B from memory
//   6x2        6 rows x 2 vectors, B in registers
//   4x3        4 rows x 3 vectors, B in registers (all 16 registers)
//
//   g++ -O3 -march=native benchmarks/tile_shapes.cpp -o /tmp/tile_shapes && /tmp/tile_shapes
//
// Each shape's output is checked against a scalar GEMM first. Compare with the FMA ceiling on one
// thread (`fma_peak 1`). The accumulators pass through memory around each k-loop (an asm statement
// takes at most 30 operands), which the kernel's tiles do not: at small K, where those loads and
// stores weigh most, the figures are below what the kernel's own tiles reach.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

constexpr int kM = 48, kN = 96, kGroup = 16;

// The twelve accumulators to and from ymm0-ymm11.
#define LOAD_ACC                                                                            \
  "vmovaps 0(%[acc]), %%ymm0\n vmovaps 32(%[acc]), %%ymm1\n vmovaps 64(%[acc]), %%ymm2\n"     \
  "vmovaps 96(%[acc]), %%ymm3\n vmovaps 128(%[acc]), %%ymm4\n vmovaps 160(%[acc]), %%ymm5\n"  \
  "vmovaps 192(%[acc]), %%ymm6\n vmovaps 224(%[acc]), %%ymm7\n vmovaps 256(%[acc]), %%ymm8\n" \
  "vmovaps 288(%[acc]), %%ymm9\n vmovaps 320(%[acc]), %%ymm10\n vmovaps 352(%[acc]), %%ymm11\n"
#define STORE_ACC                                                                           \
  "vmovaps %%ymm0, 0(%[acc])\n vmovaps %%ymm1, 32(%[acc])\n vmovaps %%ymm2, 64(%[acc])\n"     \
  "vmovaps %%ymm3, 96(%[acc])\n vmovaps %%ymm4, 128(%[acc])\n vmovaps %%ymm5, 160(%[acc])\n"  \
  "vmovaps %%ymm6, 192(%[acc])\n vmovaps %%ymm7, 224(%[acc])\n vmovaps %%ymm8, 256(%[acc])\n" \
  "vmovaps %%ymm9, 288(%[acc])\n vmovaps %%ymm10, 320(%[acc])\n vmovaps %%ymm11, 352(%[acc])\n"
#define LOOP_END "add $64, %[kb]\n inc %[k]\n cmp %[kend], %[k]\n jl 1b\n"
#define CLOBBERS                                                                                         \
  "ymm0", "ymm1", "ymm2", "ymm3", "ymm4", "ymm5", "ymm6", "ymm7", "ymm8", "ymm9", "ymm10", "ymm11", "ymm12", \
      "ymm13", "ymm14", "ymm15", "memory", "cc"
// Row k of B's vector from pointer b into register r; row k of A's row a broadcast into register r;
// accumulator acc += the broadcast in register x times B's vector in register r, or read from pointer b.
#define LOAD_B(b, r) "vmovups (%[" #b "],%[kb]), %%ymm" #r "\n"
#define BCAST(a, r) "vbroadcastss (%[" #a "],%[k],4), %%ymm" #r "\n"
#define FMA_R(x, r, acc) "vfmadd231ps %%ymm" #r ", %%ymm" #x ", %%ymm" #acc "\n"
#define FMA_M(x, b, acc) "vfmadd231ps (%[" #b "],%[kb]), %%ymm" #x ", %%ymm" #acc "\n"

// The k-loop `body` between the accumulators' load and store, with the tile's pointers as operands
// (A_ROWS, B_VECTORS) beside the loop's own.
#define KLOOP(body, ...)                                                                  \
  long k = 0, kb = 0;                                                                     \
  asm volatile(LOAD_ACC ".p2align 5\n1:\n" body LOOP_END STORE_ACC                        \
               : [k] "+r"(k), [kb] "+r"(kb)                                               \
               : __VA_ARGS__, [kend] "r"(K), [acc] "r"(acc)                               \
               : CLOBBERS)
#define A_ROWS3 [a0] "r"(a[0]), [a1] "r"(a[1]), [a2] "r"(a[2])
#define A_ROWS4 A_ROWS3, [a3] "r"(a[3])
#define A_ROWS6 A_ROWS4, [a4] "r"(a[4]), [a5] "r"(a[5])
#define B_VECTORS2 [b0] "r"(b[0]), [b1] "r"(b[1])
#define B_VECTORS3 B_VECTORS2, [b2] "r"(b[2])
#define B_VECTORS4 B_VECTORS3, [b3] "r"(b[3])

// acc: [rows][vectors] of 8 floats; a: the tile's rows of A; b: where each of its vectors' columns
// start in B (row 0; row k 16 k floats on).
void kloop_34_3regs(float* acc, const float* const* a, const float* const* b, long K) {
  KLOOP(LOAD_B(b0, 12) LOAD_B(b1, 13) LOAD_B(b2, 14)
        BCAST(a0, 15) FMA_R(15, 12, 0) FMA_R(15, 13, 1) FMA_R(15, 14, 2) FMA_M(15, b3, 3)
        BCAST(a1, 15) FMA_R(15, 12, 4) FMA_R(15, 13, 5) FMA_R(15, 14, 6) FMA_M(15, b3, 7)
        BCAST(a2, 15) FMA_R(15, 12, 8) FMA_R(15, 13, 9) FMA_R(15, 14, 10) FMA_M(15, b3, 11),
        A_ROWS3, B_VECTORS4);
}

void kloop_34_regs(float* acc, const float* const* a, const float* const* b, long K) {
  KLOOP(LOAD_B(b0, 12) LOAD_B(b1, 13)
        BCAST(a0, 15) FMA_R(15, 12, 0) FMA_R(15, 13, 1) FMA_M(15, b2, 2) FMA_M(15, b3, 3)
        BCAST(a1, 15) FMA_R(15, 12, 4) FMA_R(15, 13, 5) FMA_M(15, b2, 6) FMA_M(15, b3, 7)
        BCAST(a2, 15) FMA_R(15, 12, 8) FMA_R(15, 13, 9) FMA_M(15, b2, 10) FMA_M(15, b3, 11),
        A_ROWS3, B_VECTORS4);
}

void kloop_34_mem(float* acc, const float* const* a, const float* const* b, long K) {
  KLOOP(BCAST(a0, 15) FMA_M(15, b0, 0) FMA_M(15, b1, 1) FMA_M(15, b2, 2) FMA_M(15, b3, 3)
        BCAST(a1, 15) FMA_M(15, b0, 4) FMA_M(15, b1, 5) FMA_M(15, b2, 6) FMA_M(15, b3, 7)
        BCAST(a2, 15) FMA_M(15, b0, 8) FMA_M(15, b1, 9) FMA_M(15, b2, 10) FMA_M(15, b3, 11),
        A_ROWS3, B_VECTORS4);
}

// Broadcasts alternate between two registers, so that a row's need not wait for the last row's FMAs.
void kloop_62(float* acc, const float* const* a, const float* const* b, long K) {
  KLOOP(LOAD_B(b0, 12) LOAD_B(b1, 13)
        BCAST(a0, 15) FMA_R(15, 12, 0) FMA_R(15, 13, 1) BCAST(a1, 14) FMA_R(14, 12, 2) FMA_R(14, 13, 3)
        BCAST(a2, 15) FMA_R(15, 12, 4) FMA_R(15, 13, 5) BCAST(a3, 14) FMA_R(14, 12, 6) FMA_R(14, 13, 7)
        BCAST(a4, 15) FMA_R(15, 12, 8) FMA_R(15, 13, 9) BCAST(a5, 14) FMA_R(14, 12, 10) FMA_R(14, 13, 11),
        A_ROWS6, B_VECTORS2);
}

void kloop_43(float* acc, const float* const* a, const float* const* b, long K) {
  KLOOP(LOAD_B(b0, 12) LOAD_B(b1, 13) LOAD_B(b2, 14)
        BCAST(a0, 15) FMA_R(15, 12, 0) FMA_R(15, 13, 1) FMA_R(15, 14, 2)
        BCAST(a1, 15) FMA_R(15, 12, 3) FMA_R(15, 13, 4) FMA_R(15, 14, 5)
        BCAST(a2, 15) FMA_R(15, 12, 6) FMA_R(15, 13, 7) FMA_R(15, 14, 8)
        BCAST(a3, 15) FMA_R(15, 12, 9) FMA_R(15, 13, 10) FMA_R(15, 14, 11),
        A_ROWS4, B_VECTORS3);
}

using KLoop = void (*)(float*, const float* const*, const float* const*, long);

struct Shape {
  const char* name;
  int rows, vectors;
  KLoop kloop;
};

// 64-byte aligned floats, as torch allocates the packed weights: a B row of 16 columns is then one
// cache line (with malloc's 16-byte alignment the 3x4 tiles, which read B three times per row, lost
// a quarter of their rate to loads split across lines).
struct Aligned {
  float* p;
  explicit Aligned(size_t n) : p(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64))) {}
  ~Aligned() { std::free(p); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
  float& operator[](size_t i) { return p[i]; }
  float operator[](size_t i) const { return p[i]; }
};

// B packed: column j of row k at B[(j / 16) * 16 K + 16 k + j % 16].
struct Problem {
  int K;
  Aligned A, B, bias, C;
  std::vector<const float*> a;
  explicit Problem(int k) : K(k), A(kM * k), B(kN * k), bias(kN), C(kM * kN), a(kM) {
    for (size_t i = 0; i < static_cast<size_t>(kM * k); ++i) A[i] = static_cast<float>(i % 13) * 0.05f - 0.3f;
    for (size_t i = 0; i < static_cast<size_t>(kN * k); ++i) B[i] = static_cast<float>(i % 7) * 0.03f - 0.09f;
    for (int j = 0; j < kN; ++j) bias[j] = 0.01f * j;
    for (int i = 0; i < kM; ++i) a[i] = A.p + i * k;
  }
  // Where column j starts (row 0).
  size_t column(int j) const { return static_cast<size_t>((j / kGroup) * kGroup * K + j % kGroup); }
  float b_at(int k, int j) const { return B[column(j) + kGroup * k]; }
};

// The panel of kM x kN, in micro-tiles of s.rows x s.vectors: bias, k-loop, ReLU6, store.
void panel(const Shape& s, Problem& p) {
  alignas(32) float acc[12 * 8];
  const int width = 8 * s.vectors;
  for (int j0 = 0; j0 < kN; j0 += width) {
    const float* b[4] = {};
    for (int v = 0; v < s.vectors; ++v) b[v] = &p.B[p.column(j0 + 8 * v)];
    for (int i0 = 0; i0 + s.rows <= kM; i0 += s.rows) {
      for (int i = 0; i < s.rows; ++i)
        for (int v = 0; v < s.vectors; ++v)
          _mm256_store_ps(acc + (i * s.vectors + v) * 8, _mm256_loadu_ps(&p.bias[j0 + v * 8]));
      s.kloop(acc, p.a.data() + i0, b, p.K);
      const __m256 zero = _mm256_setzero_ps(), six = _mm256_set1_ps(6.f);
      for (int i = 0; i < s.rows; ++i)
        for (int v = 0; v < s.vectors; ++v) {
          const __m256 x = _mm256_load_ps(acc + (i * s.vectors + v) * 8);
          _mm256_storeu_ps(&p.C[(i0 + i) * kN + j0 + v * 8], _mm256_min_ps(six, _mm256_max_ps(zero, x)));
        }
    }
  }
}

bool matches(const Problem& p) {
  for (int i = 0; i < kM; ++i)
    for (int j = 0; j < kN; ++j) {
      double sum = p.bias[j];
      for (int k = 0; k < p.K; ++k) sum += static_cast<double>(p.A[i * p.K + k]) * p.b_at(k, j);
      const double want = std::fmin(6.0, std::fmax(0.0, sum));
      if (std::fabs(p.C[i * kN + j] - want) > 1e-4 * (1.0 + std::fabs(want))) return false;
    }
  return true;
}

double gflops(const Shape& s, Problem& p) {
  const long reps = 4000000 / (static_cast<long>(p.K) * kN);
  for (long r = 0; r < reps / 10 + 1; ++r) panel(s, p);
  double best = 1e30;
  for (int t = 0; t < 7; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    for (long r = 0; r < reps; ++r) panel(s, p);
    best = std::fmin(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * kM * p.K * kN * reps / best / 1e9;
}

int main() {
  const Shape shapes[] = {{"3x4 3+1", 3, 4, kloop_34_3regs}, {"3x4 2+2", 3, 4, kloop_34_regs},
                          {"3x4 mem", 3, 4, kloop_34_mem},
                          {"6x2", 6, 2, kloop_62}, {"4x3", 4, 3, kloop_43}};
  std::printf("GFLOP/s of a %d x %d panel on one thread, data in L1\n%5s", kM, kN, "K");
  for (const Shape& s : shapes) std::printf("%10s", s.name);
  std::printf("\n");
  for (int K : {16, 24, 32, 64, 96, 144}) {
    Problem p(K);
    std::printf("%5d", K);
    for (const Shape& s : shapes) {
      panel(s, p);
      if (!matches(p)) {
        std::printf("\n%s: wrong output at K = %d\n", s.name, K);
        return 1;
      }
      std::printf("%10.1f", gflops(s, p));
    }
    std::printf("\n");
  }
  return 0;
}

#else
int main() {
  std::printf("tile_shapes measures AVX2 + FMA micro-tiles; compile with -march=native on such a CPU\n");
  return 0;
}
#endif
