// How a call of the CPU kernel is cut into tiles: chosen by a cost model, remembered per shape.
#pragma once
#include "isa.h"
#include "tile_kernel.h"

namespace mnv2_fused {
namespace cpu {

// The cheapest plan (estimated vector FMAs on the busiest worker) whose scratch stays within
// `budget_floats` per worker; the smallest plan when none does.
TilePlan choose_plan(const BlockArgs& a, int64_t batch, int64_t threads, const Isa& isa, int64_t budget_floats);

}  // namespace cpu
}  // namespace mnv2_fused
