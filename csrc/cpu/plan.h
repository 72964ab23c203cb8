// How a call of the CPU kernel is cut into tiles: chosen by a cost model, remembered per shape.
#pragma once
#include "isa.h"
#include "tile_kernel.h"

namespace mnv2_fused {
namespace cpu {

// How a call's workers take its tiles (with one hidden group): contiguous shares, the ring carried
// from tile to tile (TileShares), or runs of plan.run tiles from a shared counter, each computing
// its halo afresh (the squeeze-and-excite's first pass, whose sums are grouped by run).
enum class Claiming { kShares, kRuns };

// The cheapest plan (estimated vector FMAs on the busiest worker) whose scratch stays within
// `budget_floats` per worker; the smallest plan when none does. rows_before: the stage before this
// one shared its rows out among the threads (bands of one strip, fewer images than threads), so
// bands of rows here read mostly what the same thread wrote, which the estimate leaves out.
TilePlan choose_plan(const BlockArgs& a, int64_t batch, int64_t threads, const Isa& isa, int64_t budget_floats,
                     Claiming claiming, bool rows_before = false);

}  // namespace cpu
}  // namespace mnv2_fused
