#include "chain_scratch.h"

#include <algorithm>

namespace mnv2_fused {
namespace cpu {
namespace {
thread_local ChainScratch* open_chain = nullptr;
}  // namespace

ChainScratch::ChainScratch() : outer_(open_chain) { open_chain = this; }

ChainScratch::~ChainScratch() { open_chain = outer_; }

float* scratch_floats(int64_t floats, int64_t most, const at::TensorOptions& options, at::Tensor& own) {
  ChainScratch* chain = open_chain;
  if (chain == nullptr) {
    own = at::empty({floats}, options);
    return own.data_ptr<float>();
  }
  chain->most_requested_ = std::max(chain->most_requested_, floats);
  if (chain->region_ != nullptr && floats <= chain->region_floats_) return chain->region_;
  if (!chain->block_.defined() || chain->block_.numel() < floats || chain->block_.numel() > std::max(floats, most)) {
    chain->block_.reset();
    chain->block_ = at::empty({floats}, options);
  }
  return chain->block_.data_ptr<float>();
}

}  // namespace cpu
}  // namespace mnv2_fused
