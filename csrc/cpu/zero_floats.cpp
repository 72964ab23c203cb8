#include "zero_floats.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#endif

namespace mnv2_fused {
namespace cpu {
namespace {

// Address space only: private read-only pages are backed by the zero page when read and count
// against no commit limit.
constexpr int64_t kZeroBytes = int64_t(64) << 20;

const float* map_zeros() {
#if defined(__unix__) || defined(__APPLE__)
  void* p = mmap(nullptr, kZeroBytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<const float*>(p);
#else
  return nullptr;
#endif
}

}  // namespace

const float* zero_floats(int64_t n) {
  static const float* const zeros = map_zeros();
  return n <= kZeroBytes / static_cast<int64_t>(sizeof(float)) ? zeros : nullptr;
}

}  // namespace cpu
}  // namespace mnv2_fused
