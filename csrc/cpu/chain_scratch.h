// Scratch memory that the stages of one chain of kernel calls (a whole network's forward) pass
// from one to the next.
//
// Why: a call that allocates its own scratch gets whichever freed block the allocator finds first,
// often one the caches have not seen lately, and its first writes to it miss; in some processes
// (by where the blocks happen to lie) a stage ran 1.3-2.5x slower for the process's whole life. A
// chain's stages instead reuse one block, which the stage before has just had in its cache. It
// grows when a stage needs more (freed first, so the chain never holds two), shrinks when it
// would hold more than a stage may (see scratch_floats), and is freed when the chain ends: it is
// allocated through PyTorch's allocator, during the call, like any scratch.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace mnv2_fused {
namespace cpu {

// Open for its lifetime on the thread that makes it (the chain's leader), which is where the
// stages ask for their scratch. Chains may nest: the inner one serves until it ends.
class ChainScratch {
 public:
  ChainScratch();
  ~ChainScratch();
  ChainScratch(const ChainScratch&) = delete;
  ChainScratch& operator=(const ChainScratch&) = delete;

  // Serves requests of up to `floats` from `region` (memory the caller holds for the stage to come,
  // as a forward's arena) instead of the chain's own block; larger ones as before.
  void lend(float* region, int64_t floats) { region_ = region, region_floats_ = floats; }

  // The most floats requested since the last call.
  int64_t take_most_requested() {
    const int64_t most = most_requested_;
    most_requested_ = 0;
    return most;
  }

 private:
  friend float* scratch_floats(int64_t floats, int64_t most, const at::TensorOptions& options, at::Tensor& own);
  ChainScratch* outer_;
  at::Tensor block_;
  float* region_ = nullptr;
  int64_t region_floats_ = 0, most_requested_ = 0;
};

// `floats` of scratch for one call (float32, CPU): from the chain open on this thread, valid until
// the chain's next request, or, with none open, from a new tensor left in `own` (which the caller
// holds meanwhile). `most`: the most scratch the call may hold (its share of the memory bound); a
// larger block left by an earlier stage is freed and one of `floats` taken. (The block a stage
// leaves is still held while the next one makes its output: where that output is large, as after
// a network's stem, open the chain after that stage.)
float* scratch_floats(int64_t floats, int64_t most, const at::TensorOptions& options, at::Tensor& own);

}  // namespace cpu
}  // namespace mnv2_fused
