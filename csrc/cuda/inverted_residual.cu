// CUDA kernel of mnv2_fused::inverted_residual: one launch per block.
//
// Each thread block owns a TILE_H x TILE_W output tile of one image (and a slice of the output
// channels when they do not all fit in shared memory) and walks the hidden channels in chunks:
//   1. expand the chunk over the input tile and its halo (1x1 conv + bias + ReLU6) into shared memory;
//   2. depthwise 3x3 (stride 1 or 2) + bias + ReLU6 into shared memory;
//   3. accumulate the chunk's projection into the shared-memory output accumulator.
// After the last chunk: bias, residual, store. The hidden tensor never touches global memory.
// Input and output are addressed through their strides (NCHW, channels_last or any view), with
// 64-bit offsets. Arithmetic is fp32 whatever the storage type.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../op_entry_points.h"

namespace mnv2_fused {
namespace cuda {
namespace {

constexpr int kTileH = 4;
constexpr int kTileW = 8;
constexpr int kTilePixels = kTileH * kTileW;
constexpr int kChunk = 32;  // hidden channels per chunk
constexpr int kThreads = 256;

struct Args {
  int64_t sxn, sxc, sxh, sxw;
  int64_t syn, syc, syh, syw;
  int64_t n, cin, h, w, hidden, cout, oh, ow;
  int stride;
  bool expand, residual;
  int64_t tiles_w, tiles_per_image;
  int64_t cout_per_block;
};

// ReLU6 that keeps NaN (fminf/fmaxf would turn NaN into a number).
__device__ __forceinline__ float relu6(float v) { return v < 0.f ? 0.f : (v > 6.f ? 6.f : v); }

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    inverted_residual_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ w_expand,
                             const scalar_t* __restrict__ b_expand, const scalar_t* __restrict__ w_dw,
                             const scalar_t* __restrict__ b_dw, const scalar_t* __restrict__ w_proj,
                             const scalar_t* __restrict__ b_proj, scalar_t* __restrict__ y, const Args a) {
  extern __shared__ float smem[];
  const int in_h = (kTileH - 1) * a.stride + 3;
  const int in_w = (kTileW - 1) * a.stride + 3;
  const int in_pixels = in_h * in_w;
  float* hid = smem;                            // [kChunk][in_pixels]
  float* dws = hid + kChunk * in_pixels;        // [kChunk][kTilePixels]
  float* acc = dws + kChunk * kTilePixels;      // [cout_per_block][kTilePixels]

  const int64_t tile = blockIdx.x;
  const int64_t n = tile / a.tiles_per_image;
  const int64_t t_in_image = tile % a.tiles_per_image;
  const int64_t oy0 = (t_in_image / a.tiles_w) * kTileH;
  const int64_t ox0 = (t_in_image % a.tiles_w) * kTileW;
  const int64_t iy0 = oy0 * a.stride - 1, ix0 = ox0 * a.stride - 1;
  const int64_t co0 = static_cast<int64_t>(blockIdx.y) * a.cout_per_block;
  const int64_t co_n = a.cout - co0 < a.cout_per_block ? a.cout - co0 : a.cout_per_block;
  const scalar_t* xn = x + n * a.sxn;

  for (int64_t i = threadIdx.x; i < co_n * kTilePixels; i += blockDim.x)
    acc[i] = static_cast<float>(b_proj[co0 + i / kTilePixels]);

  for (int64_t h0 = 0; h0 < a.hidden; h0 += kChunk) {
    const int hc = static_cast<int>(a.hidden - h0 < kChunk ? a.hidden - h0 : kChunk);
    // 1. expand (or copy, for a block without expand) the chunk over the tile and its halo;
    //    pixels outside the image are the depthwise zero padding.
    for (int i = threadIdx.x; i < hc * in_pixels; i += blockDim.x) {
      const int c = i / in_pixels, p = i % in_pixels;
      const int64_t iy = iy0 + p / in_w, ix = ix0 + p % in_w;
      float v = 0.f;
      if (iy >= 0 && iy < a.h && ix >= 0 && ix < a.w) {
        const scalar_t* px = xn + iy * a.sxh + ix * a.sxw;
        if (a.expand) {
          const scalar_t* wr = w_expand + (h0 + c) * a.cin;
          float s = static_cast<float>(b_expand[h0 + c]);
          for (int64_t k = 0; k < a.cin; ++k) s += static_cast<float>(wr[k]) * static_cast<float>(px[k * a.sxc]);
          v = relu6(s);
        } else {
          v = static_cast<float>(px[(h0 + c) * a.sxc]);
        }
      }
      hid[c * in_pixels + p] = v;
    }
    __syncthreads();
    // 2. depthwise 3x3 + bias + ReLU6.
    for (int i = threadIdx.x; i < hc * kTilePixels; i += blockDim.x) {
      const int c = i / kTilePixels, p = i % kTilePixels;
      const int ly = (p / kTileW) * a.stride, lx = (p % kTileW) * a.stride;
      const scalar_t* k9 = w_dw + (h0 + c) * 9;
      const float* src = hid + c * in_pixels;
      float s = static_cast<float>(b_dw[h0 + c]);
#pragma unroll
      for (int dy = 0; dy < 3; ++dy)
#pragma unroll
        for (int dx = 0; dx < 3; ++dx) s += static_cast<float>(k9[dy * 3 + dx]) * src[(ly + dy) * in_w + lx + dx];
      dws[c * kTilePixels + p] = relu6(s);
    }
    __syncthreads();
    // 3. projection of the chunk, accumulated.
    for (int64_t i = threadIdx.x; i < co_n * kTilePixels; i += blockDim.x) {
      const int64_t o = i / kTilePixels;
      const int p = static_cast<int>(i % kTilePixels);
      const scalar_t* wr = w_proj + (co0 + o) * a.hidden + h0;
      float s = 0.f;
      for (int c = 0; c < hc; ++c) s += static_cast<float>(wr[c]) * dws[c * kTilePixels + p];
      acc[i] += s;
    }
    __syncthreads();
  }

  // Residual and store; output channels vary fastest across threads.
  for (int64_t i = threadIdx.x; i < co_n * kTilePixels; i += blockDim.x) {
    const int64_t o = i % co_n;
    const int p = static_cast<int>(i / co_n);
    const int64_t oy = oy0 + p / kTileW, ox = ox0 + p % kTileW;
    if (oy >= a.oh || ox >= a.ow) continue;
    float v = acc[o * kTilePixels + p];
    if (a.residual) v += static_cast<float>(xn[(co0 + o) * a.sxc + oy * a.sxh + ox * a.sxw]);
    y[n * a.syn + (co0 + o) * a.syc + oy * a.syh + ox * a.syw] = static_cast<scalar_t>(v);
  }
}

void run_cuda(const at::Tensor& x, const BlockShape& s, const std::optional<at::Tensor>& w_expand,
              const std::optional<at::Tensor>& b_expand, const at::Tensor& w_dw, const at::Tensor& b_dw,
              const at::Tensor& w_proj, const at::Tensor& b_proj, at::Tensor& y) {
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                   "mnv2_fused.inverted_residual: the CUDA kernel supports float32, float16 and bfloat16, got ",
                   x.scalar_type());
  if (y.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(x.device());
  // The entry points made every weight contiguous.
  const at::Tensor& wd = w_dw, &bd = b_dw, &wp = w_proj, &bp = b_proj;
  const at::Tensor we = s.expand ? *w_expand : at::Tensor(), be = s.expand ? *b_expand : at::Tensor();

  Args a;
  a.sxn = x.stride(0), a.sxc = x.stride(1), a.sxh = x.stride(2), a.sxw = x.stride(3);
  a.syn = y.stride(0), a.syc = y.stride(1), a.syh = y.stride(2), a.syw = y.stride(3);
  a.n = s.n, a.cin = s.cin, a.h = s.h, a.w = s.w, a.hidden = s.hidden, a.cout = s.cout;
  a.oh = s.oh, a.ow = s.ow;
  a.stride = static_cast<int>(s.stride);
  a.expand = s.expand, a.residual = s.residual;
  a.tiles_w = (s.ow + kTileW - 1) / kTileW;
  a.tiles_per_image = ((s.oh + kTileH - 1) / kTileH) * a.tiles_w;

  const int in_pixels = ((kTileH - 1) * a.stride + 3) * ((kTileW - 1) * a.stride + 3);
  const int64_t fixed_bytes = sizeof(float) * (kChunk * in_pixels + kChunk * kTilePixels);
  int device = x.get_device();
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // Output channels per block: all of them when the accumulator fits, else slices (each slice
  // recomputes the hidden chunk; correct for any channel count).
  const int64_t fit = (max_smem - fixed_bytes) / (sizeof(float) * kTilePixels);
  TORCH_CHECK(fit >= 1, "mnv2_fused: not enough shared memory for the CUDA kernel");
  a.cout_per_block = std::min<int64_t>(s.cout, fit);
  const int64_t cout_blocks = (s.cout + a.cout_per_block - 1) / a.cout_per_block;
  const size_t smem = fixed_bytes + sizeof(float) * a.cout_per_block * kTilePixels;
  const int64_t tiles = s.n * a.tiles_per_image;
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max() && cout_blocks <= 65535,
              "mnv2_fused: input too large for one CUDA launch (", tiles, " tiles)");
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(cout_blocks));
  // c10 headers only: ATen/cuda/CUDAContext.h pulls in cuSPARSE/cuBLAS headers a minimal toolkit lacks.
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mnv2_fused_inverted_residual", [&] {
    auto kernel = inverted_residual_kernel<scalar_t>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    kernel<<<grid, kThreads, smem, stream>>>(
        x.data_ptr<scalar_t>(), s.expand ? we.data_ptr<scalar_t>() : nullptr,
        s.expand ? be.data_ptr<scalar_t>() : nullptr, wd.data_ptr<scalar_t>(), bd.data_ptr<scalar_t>(),
        wp.data_ptr<scalar_t>(), bp.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv2_fused, CUDA, m) {
  m.impl("inverted_residual", &inverted_residual_functional<run_contiguous<run_cuda>>);
  m.impl("inverted_residual_out", &inverted_residual_out<run_contiguous<run_cuda>>);
}

}  // namespace cuda
}  // namespace mnv2_fused
