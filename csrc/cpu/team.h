// A team of threads for a chain of kernel calls (a whole network's forward), so its stages do not
// each open and close an OpenMP region. The team's threads are ATen's own (one at::parallel_for
// region for the whole chain): no second set of threads competes with them for the cores.
//
// Why: with another process on one of the cores, an OpenMP region's closing barrier and its idle
// workers spin for up to milliseconds, holding a core while the thread they wait for queues behind
// the other process. In a team, a thread that waits spins for a few tens of microseconds (stages
// follow each other that closely) and then sleeps, so the scheduler can move the other thread onto
// its core; and the leader waits only for work a helper has claimed, never for a helper to start.
#pragma once
#include <c10/util/FunctionRef.h>

#include <array>
#include <cstdint>

#include "tile_kernel.h"

namespace mnv2_fused {
namespace cpu {

// Runs body() on the calling thread, which leads a team of up to `threads` threads for the
// team_parallel_for calls body makes; of one thread fewer while another process keeps a core busy
// and that measurably pays (see Contention in team.cpp: `work` keys the chains that do the same
// work, such as the input's size). Inside a team already, or with one thread, just runs body().
void run_as_team(int64_t threads, int64_t work, c10::function_ref<void()> body);

// f(b, e) over [begin, end) in chunks, as at::parallel_for(begin, end, grain, f) divides it: on
// the team when called by a team's leader, on at::parallel_for otherwise. f is called, not kept:
// a reference to it, where a std::function took a heap allocation per call for a lambda capturing
// more than two references (each a cache miss or two, 30 calls in a batch-1 forward).
void team_parallel_for(int64_t begin, int64_t end, int64_t grain, c10::function_ref<void(int64_t, int64_t)> f);

// A range of memory [begin, begin + bytes).
struct MemoryRange {
  const void* begin = nullptr;
  int64_t bytes = 0;
};
constexpr int kWarmRanges = kWarmRuns;

// Memory the team's threads prefetch while they compute the stages to come, until the next call:
// the next stage's weights, which a forward otherwise reads from memory when it gets to them. Each
// range is cut into one contiguous share per thread of the team, in rank order, as the kept
// blocks share their weights out (hidden channels in the first pass, output columns in the second,
// the first share to rank 0): each thread prefetches its own share, into its own L2 cache, a line
// per k-step of its GEMMs' micro-tiles (warm_cursor, Gemm::cursor). Up to kWarmRanges ranges, in
// order; outside a team's leader, nothing.
void warm_while_computing(const std::array<MemoryRange, kWarmRanges>& ranges);

// The calling thread's share of those ranges while it runs a chunk of a team's job; null otherwise.
WarmCursor* warm_cursor();

}  // namespace cpu
}  // namespace mnv2_fused
