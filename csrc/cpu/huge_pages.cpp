#include "huge_pages.h"

#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mnv2_fused {
namespace cpu {
namespace {

// MNV2_FUSED_HUGE_PAGES=0 keeps arenas in the allocator's memory at their exact size, and weights
// where they are; 1 (the default) lets them round up to huge pages.
bool huge_pages_switched_on() {
  const char* v = std::getenv("MNV2_FUSED_HUGE_PAGES");
  if (v == nullptr || *v == 0) return true;
  const std::string value(v);
  TORCH_CHECK_VALUE(value == "0" || value == "1", "mnv2_fused: MNV2_FUSED_HUGE_PAGES must be 0 or 1, got '", value,
                    "'");
  return value == "1";
}

// The system's transparent huge pages: "always" or "madvise" (the usual default) honour the advice.
bool system_offers_huge_pages() {
  static const bool offered = [] {
#if defined(__linux__)
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string line;
    return std::getline(f, line) && line.find("[never]") == std::string::npos;
#else
    return false;
#endif
  }();
  return offered;
}

// `floats` rounded up to whole huge pages: what huge_page_floats maps, and so what
// arena_floats_for predicts an arena will hold.
int64_t whole_pages_floats(int64_t floats) {
  constexpr int64_t page_floats = kHugePageBytes / static_cast<int64_t>(sizeof(float));
  return (floats + page_floats - 1) / page_floats * page_floats;
}

void report_to_profiler(void* p, int64_t bytes) {
  c10::reportMemoryUsageToProfiler(p, bytes, 0, 0, c10::Device(c10::DeviceType::CPU));
}

}  // namespace

bool use_huge_pages(int64_t floats) {
  return floats * static_cast<int64_t>(sizeof(float)) >= kHugePageBytes / 2 && huge_pages_switched_on() &&
         system_offers_huge_pages();
}

at::Tensor huge_page_floats(int64_t floats) {
#if defined(__linux__)
  const int64_t bytes = whole_pages_floats(floats) * static_cast<int64_t>(sizeof(float));
  // A huge page needs a 2 MiB-aligned address: map a page more and give back the ends.
  const size_t over = static_cast<size_t>(bytes + kHugePageBytes);
  void* const raw = mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return at::Tensor();
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (begin + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  if (aligned > begin) munmap(raw, aligned - begin);
  const uintptr_t end = begin + over, used_end = aligned + static_cast<uintptr_t>(bytes);
  if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
  void* const p = reinterpret_cast<void*>(aligned);
  madvise(p, static_cast<size_t>(bytes), MADV_HUGEPAGE);  // advice: without it, small pages
  report_to_profiler(p, bytes);
  return at::from_blob(
      p, {bytes / static_cast<int64_t>(sizeof(float))},
      [bytes](void* q) {
        report_to_profiler(q, -bytes);
        munmap(q, static_cast<size_t>(bytes));
      },
      at::TensorOptions().dtype(at::kFloat));
#else
  (void)floats;
  return at::Tensor();
#endif
}

int64_t arena_floats_for(int64_t floats) { return use_huge_pages(floats) ? whole_pages_floats(floats) : floats; }

std::vector<at::Tensor> copies_in_huge_pages(const std::vector<at::Tensor>& tensors) {
  constexpr int64_t kLineFloats = 16;
  auto copied = [](const at::Tensor& t) {
    return t.defined() && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_non_overlapping_and_dense() &&
           t.numel() > 0 && !t.requires_grad();
  };
  int64_t floats = 0;
  for (const at::Tensor& t : tensors)
    if (copied(t)) floats += (t.numel() + kLineFloats - 1) / kLineFloats * kLineFloats;
  if (floats == 0 || !use_huge_pages(floats)) return tensors;
  const at::Tensor block = huge_page_floats(floats);
  if (!block.defined()) return tensors;
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  float* next = block.data_ptr<float>();
  for (const at::Tensor& t : tensors) {
    if (!copied(t)) {
      out.push_back(t);
      continue;
    }
    // A tensor of its own (its own version counter, not a view of the block), with t's strides
    // (the depthwise taps are a permuted layout), which keeps the block mapped while it lives.
    at::Tensor copy = at::from_blob(
        next, t.sizes(), t.strides(), [keep = block](void*) {}, t.options());
    copy.copy_(t);
    out.push_back(std::move(copy));
    next += (t.numel() + kLineFloats - 1) / kLineFloats * kLineFloats;
  }
  return out;
}

}  // namespace cpu
}  // namespace mnv2_fused
