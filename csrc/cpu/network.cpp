// CPU kernel of mnv2_fused::mobilenet_v2_forward: every fused stage of a converted MobileNetV2 in
// one call, so a forward crosses from Python into the library once instead of once per stage, and
// its stages share one team of threads (team.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <string>
#include <utility>
#include <vector>

#include "chain_scratch.h"
#include "ops_cpu.h"
#include "team.h"

namespace mnv2_fused {
namespace cpu {
namespace {

// Runs one stage inside a profiler scope of its own, named "mnv2_fused.mobilenet_v2_forward: " and
// the stage's name ("stem+block 0", "block 1", ..., "head+pool", "classifier"), so torch.profiler
// and mnv2_fused.bench.measure.scope_times show where a forward's time goes (the stages are plain
// calls here, not dispatched ops). With no profiler or timer running the scope costs a check of a
// thread-local flag; the name is built only for one.
template <class Name, class F>
at::Tensor stage(const Name& name, F&& f) {
  RECORD_FUNCTION(std::string("mnv2_fused.mobilenet_v2_forward: ") + name(), std::vector<c10::IValue>());
  return std::forward<F>(f)();
}

at::Tensor mobilenet_v2_forward(const at::Tensor& x, at::TensorList stem, int64_t stem_stride, int64_t stride,
                                const c10::List<std::optional<at::Tensor>>& blocks, at::IntArrayRef block_strides,
                                at::IntArrayRef block_residuals, at::TensorList head, at::TensorList classifier) {
  constexpr const char* op = "mnv2_fused.mobilenet_v2_forward";
  TORCH_CHECK_VALUE(stem.size() == 6 && head.size() == 2 && (classifier.empty() || classifier.size() == 2), op,
                    ": expected 6 stem, 2 head and 0 or 2 classifier tensors, got ", stem.size(), ", ", head.size(),
                    " and ", classifier.size());
  const int64_t n_blocks = static_cast<int64_t>(block_strides.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(blocks.size()) == 6 * n_blocks &&
                        static_cast<int64_t>(block_residuals.size()) == n_blocks,
                    op, ": expected 6 weights, a stride and a residual flag per block, got ", blocks.size(),
                    " weights, ", n_blocks, " strides and ", block_residuals.size(), " flags");
  at::Tensor y;
  run_as_team(at::get_num_threads(), x.numel(), [&] {
    y = stage([] { return "stem+block 0"; }, [&] {
      return stem_inverted_residual(x, stem[0], stem[1], stem_stride, stem[2], stem[3], stem[4], stem[5], stride);
    });
    {
      // The blocks' scratch, passed from one to the next (chain_scratch.h). Not the stem's: block 1
      // would hold it while making its output, beside the stem's, and raise the forward's peak.
      const ChainScratch scratch;
      for (int64_t i = 0; i < n_blocks; ++i) {
        auto w = [&](int64_t j) { return blocks.get(6 * i + j); };
        TORCH_CHECK_VALUE(w(2).has_value() && w(3).has_value() && w(4).has_value() && w(5).has_value(), op,
                          ": block ", i, " lacks a depthwise or projection weight");
        // "block k" is torchvision's features[k + 1] (features[1], fused into the stem's stage, is block 0).
        y = stage([&] { return "block " + std::to_string(i + 1); }, [&] {
          return inverted_residual(y, w(0), w(1), *w(2), *w(3), *w(4), *w(5), block_strides[i],
                                   block_residuals[i] != 0);
        });
      }
    }
    y = stage([] { return "head+pool"; }, [&] { return pointwise_relu6_mean(y, head[0], head[1]); });
    if (!classifier.empty())
      y = stage([] { return "classifier"; }, [&] { return linear(y, classifier[0], classifier[1], "none"); });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv2_fused, CPU, m) { m.impl("mobilenet_v2_forward", &mobilenet_v2_forward); }

}  // namespace cpu
}  // namespace mnv2_fused
