// Facts about the op's tensors that every device and the Python side agree on, in one
// device-neutral place (no torch, no intrinsics). mnv2_fused/layout.py and reference.py mirror them.
#pragma once
#include <cstdint>

namespace mnv2_fused {

// Output channels per group of a packed weight: a (O, K) matrix packed is (ceil(O / 16), K, 16)
// contiguous, block g holding output channels 16g..16g+15 for every k, zeros past O. Read once per
// forward from far caches or memory, a block is one contiguous run instead of a 64-byte piece of
// every row (layout.pack_columns).
constexpr int64_t kPackedColumns = 16;

// Output size of a 3x3 convolution with padding 1.
constexpr int64_t conv3x3_out(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }

}  // namespace mnv2_fused
