// Memory that reads as zeros, for the depthwise's padding rows.
#pragma once
#include <cstdint>

namespace mnv2_fused {
namespace cpu {

// At least n floats that read as 0.f (never written), or null where there is no such region or n
// exceeds it. One region, mapped read-only once per process: every page of it is the system's one
// page of zeros, so reading any part of it hits the same cache lines.
const float* zero_floats(int64_t n);

}  // namespace cpu
}  // namespace mnv2_fused
