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

// Output size of the block's convolutions: a k x k convolution (odd k, dilation d) with the
// symmetric padding d (k - 1) / 2, or TensorFlow's "same" padding, at stride 1 or 2.
constexpr int64_t conv_out(int64_t size, int64_t stride) { return (size - 1) / stride + 1; }

// "same" padding before the first pixel, for a window `span` = (k - 1) d + 1 wide: half the total,
// rounded down (the rest goes after the last pixel).
constexpr int64_t same_pad_before(int64_t size, int64_t out, int64_t stride, int64_t span) {
  return ((out - 1) * stride + span - size) > 0 ? ((out - 1) * stride + span - size) / 2 : 0;
}

}  // namespace mnv2_fused
