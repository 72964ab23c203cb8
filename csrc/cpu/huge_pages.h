// Memory in transparent huge pages, for what a converted network's forwards walk every time: the
// arena they keep their activations in (forward_arena.h) and the folded weights.
//
// Why: in 4 KiB pages the arena's 1.18 MiB at batch 1 (224x224) lies wherever the system put each
// page, and a forward's stages walk it while megabytes of weights stream past. In one 2 MiB page,
// batch-1 MobileNetV2 forwards took 0.958-1.000x the time, median 0.975x (2-core Xeon, six runs of
// benchmarks/huge_pages.py), batch 8 0.989x and 0.992x; the same arena on a 2 MiB boundary in
// 4 KiB pages read level (README, How the CPU kernel works).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mnv2_fused {
namespace cpu {

// Bytes of a transparent huge page (x86-64 and AArch64 Linux with 4 KiB base pages).
constexpr int64_t kHugePageBytes = int64_t(2) << 20;

// Whether `floats` floats (an arena, a network's weights) go into huge pages: at least half a huge
// page, so that the rounding at most doubles them; MNV2_FUSED_HUGE_PAGES not 0 (read at every
// call); Linux with transparent huge pages not off ("never").
bool use_huge_pages(int64_t floats);

// The floats of a mapping of whole huge pages that holds at least `floats`, advised as such (the
// system may still back them with small pages); undefined where the mapping fails. The profiler
// sees the mapping as an allocation of its size, as it sees the allocator's.
at::Tensor huge_page_floats(int64_t floats);

// The floats an arena that needs `floats` holds: use_huge_pages' rounding, or `floats`.
int64_t arena_floats_for(int64_t floats);

// Copies of the dense float32 CPU tensors among `tensors` (strides kept), one after another on
// cache lines in one mapping of huge pages (freed with the last of them); the others as they are,
// and all of them where use_huge_pages declines their floats. For a converted network's weights,
// which its forward streams through every time: at batch 1 its forwards took 0.985x the time,
// with the arena already in a huge page (benchmarks/huge_pages.py --part weights, twice; the same
// copy in 4 KiB pages level).
std::vector<at::Tensor> copies_in_huge_pages(const std::vector<at::Tensor>& tensors);

}  // namespace cpu
}  // namespace mnv2_fused
