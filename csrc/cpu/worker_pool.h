// The CPU kernels' own workers. A call's items (tiles, hidden groups, pixels) are claimed in runs
// from a shared counter by the calling thread and by helper threads; the call returns once every
// claimed run is done, without waiting for helpers that have not started. So a helper whose core
// another process holds delays nothing but the run it is in, where a fork-join team (ATen's
// parallel_for) waits at every stage for its slowest thread. Idle helpers spin for a few tens of
// microseconds (stages follow each other that closely), then sleep.
#pragma once
#include <cstdint>
#include <functional>

namespace mnv2_fused {
namespace cpu {

// fn(slot, begin, end) for runs [begin, end) of [0, items), `run` items each (the last may be
// shorter), on up to `threads` threads. slot: 0 for the calling thread, 1 .. threads - 1 for the
// helpers taking part; a slot is used by one thread at a time (per-slot scratch is safe). Calls from
// several threads at once are served one at a time by the helpers; the others run alone.
using RunFn = std::function<void(int64_t slot, int64_t begin, int64_t end)>;
void parallel_runs(int64_t items, int64_t run, int64_t threads, const RunFn& fn);

}  // namespace cpu
}  // namespace mnv2_fused
