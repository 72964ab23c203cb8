// The environment the CUDA kernel's body (inverted_residual_kernel.cuh) compiles against: CUDA
// itself under nvcc, or, compiled as host C++, the tests' SIMT emulation (tests/simt/), which
// provides the same names: blockIdx, threadIdx, __syncthreads, atomicAdd, nvcuda::wmma, the
// fp16/bf16 types, and the project's copy16 / zero16. The kernel uses nothing else.
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#define MNV2_DEVICE __device__ __forceinline__
#define MNV2_GLOBAL(threads) __global__ void __launch_bounds__(threads)
#define MNV2_DYNAMIC_SHARED(name) extern __shared__ __align__(128) unsigned char name[]

// 16-byte copies (both pointers 16-byte aligned): one load and one store instruction each.
__device__ __forceinline__ void copy16(void* dst, const void* src) {
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
}
__device__ __forceinline__ void zero16(void* dst) { *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0); }
#else
#include "simt_emulation.h"
#endif
