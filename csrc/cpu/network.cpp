// CPU kernel of mnv2_fused::mobilenet_v2_forward: every fused stage of a converted MobileNetV2 in
// one call, so a forward crosses from Python into the library once instead of once per stage, and
// its stages share one team of threads (team.h).
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "chain_scratch.h"
#include "forward_arena.h"
#include "huge_pages.h"
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

// The tensors a forward made for its stages' outputs in the arena, kept with the prepared stages:
// a stage's output lies at the same place in the same arena every forward, and a tensor made for it
// anew (and released a stage later) took 1-2 us of each stage's start, the allocator's memory and
// the tensor's cold in the caches by then, while the other threads waited for the stage's first job.
struct OutputViews {
  const float* arena = nullptr;  // the arena's memory and size the views lie in
  int64_t floats = 0;
  std::vector<at::Tensor> views;  // per stage, in order; undefined where a stage's output was not in it
};

// Where a forward's activations and scratch go. With an arena open on the thread (forward_arena.h):
// each stage's output at the end of the arena its input does not hold, its scratch (lent to the
// chain) between the two; where the arena is too small, or there is none, in new tensors. Each
// stage's need (input, output and scratch, in cache lines) is recorded for the arena's next size.
class Activations {
 public:
  Activations(ForwardArena* arena, OutputViews& kept) : arena_(arena), kept_(kept) {
    if (arena_ != nullptr) arena_->begin();
  }

  // The output of the stage about to run, whose input is the last output() made (none for the
  // first stage): (n, c, h, w) channels_last, or (n, c); in the arena, or new. `chain` (if any) is
  // lent the arena's space between the two.
  at::Tensor output(at::IntArrayRef sizes, const at::TensorOptions& options, ChainScratch* chain) {
    const size_t stage = stage_++;
    const End in_end = end_;
    in_floats_ = out_floats_;
    out_floats_ = floats_of(sizes);
    const int64_t floats = arena_ == nullptr ? 0 : arena_->floats() / kLine * kLine;
    const int64_t held = (in_end == kNone ? 0 : in_floats_) + out_floats_;
    const bool image = sizes.size() == 4;
    if (floats < held || out_floats_ == 0) {
      end_ = kNone;
      if (chain != nullptr) chain->lend(nullptr, 0);
      return at::empty(sizes, image ? options.memory_format(at::MemoryFormat::ChannelsLast) : options);
    }
    end_ = in_end == kLow ? kHigh : kLow;
    float* const base = arena_->data();
    const int64_t low = end_ == kLow ? out_floats_ : in_end == kLow ? in_floats_ : 0;
    if (chain != nullptr) chain->lend(base + low, floats - held);
    if (kept_.arena != base || kept_.floats != floats) kept_ = {base, floats, {}};
    if (kept_.views.size() <= stage) kept_.views.resize(stage + 1);
    at::Tensor& view = kept_.views[stage];
    if (!view.defined()) {
      float* const data = end_ == kLow ? base : base + floats - out_floats_;
      const int64_t c = sizes[1];
      view = image ? at::from_blob(data, sizes, {sizes[2] * sizes[3] * c, 1, sizes[3] * c, c}, options)
                   : at::from_blob(data, sizes, {c, 1}, options);
    }
    return view;
  }

  // The stage output() was last called for has run: records what it needed.
  void stage_done(ChainScratch* chain) {
    if (arena_ == nullptr) return;
    const int64_t scratch = chain != nullptr ? chain->take_most_requested() : 0;
    const int64_t held = round_up(in_floats_ + out_floats_ + scratch, kLine);
    most_held_ = std::max(most_held_, held);
    arena_->need(held);
  }

  // The most floats any stage so far held at once (with an arena): what the arena will hold.
  int64_t most_held() const { return most_held_; }

  // Floats a stage's output of these sizes takes in the arena.
  static int64_t floats_of(at::IntArrayRef sizes) { return round_up(c10::multiply_integers(sizes), kLine); }

  static constexpr int64_t kLine = 16;  // floats: activations start on cache lines

 private:
  enum End { kNone, kLow, kHigh };
  ForwardArena* arena_;
  OutputViews& kept_;
  size_t stage_ = 0;
  int64_t in_floats_ = 0, out_floats_ = 0, most_held_ = 0;
  End end_ = kNone;
};

// The stem's and the blocks' kernel calls made ready for one input shape (ops_cpu.h: PreparedBlock),
// with their shapes: kept in the arena, so the bound forwards after the first skip the checks, the
// weights' layout and the plans' lookup, which took about 4 us a stage in a 4 ms forward at batch 1
// and 18 us before the stem (the weights' metadata comes from memory after the stages before).
// Made for as many threads as there were, for the weights the arena's owner binds.
struct PreparedStages {
  std::vector<int64_t> input;  // the input's sizes
  int64_t threads = 0;
  const c10::TensorImpl* stem_weight = nullptr;
  StemShape stem_shape{};
  PreparedBlock stem;
  std::vector<BlockShape> shapes;
  std::vector<PreparedBlock> blocks;
  // What the threads prefetch while they compute (team.h: warm_while_computing): entry i during the
  // stage before block i, block i's weights; the last, the head's weight.
  std::vector<std::array<MemoryRange, kWarmRanges>> warm;
  // The stages' output tensors in the arena: made by the first forward in its memory, used by the
  // next ones while the arena keeps that memory.
  mutable OutputViews outputs;

  bool serves(const at::Tensor& x, const at::Tensor& w_stem, int64_t n_blocks) const {
    return x.sizes() == at::IntArrayRef(input) && x.scalar_type() == at::kFloat && threads == at::get_num_threads() &&
           stem_weight == w_stem.unsafeGetTensorImpl() && static_cast<int64_t>(blocks.size()) == n_blocks;
  }

  // Bytes of the weight copies the prepared calls hold (the stem's packed 3x3 weight).
  int64_t kept_bytes() const {
    int64_t bytes = 0;
    auto add = [&](const PreparedBlock& p) {
      for (const at::Tensor& t : p.weights.keep) bytes += t.defined() ? static_cast<int64_t>(t.nbytes()) : 0;
    };
    add(stem);
    for (const PreparedBlock& p : blocks) add(p);
    return bytes;
  }
};

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
    // The stages' scratch passes from one to the next (chain_scratch.h). Without an arena the stem's
    // stays out of the chain: block 1 would hold it while making its output, beside the stem's,
    // and raise the forward's peak; in the arena it goes where block 1's output does.
    ForwardArena* const arena = open_arena();
    // The arena's prepared stages when they serve this input; else made here (and kept in the
    // arena, if there is one, once the stages have run).
    const auto* kept = arena != nullptr ? static_cast<const PreparedStages*>(arena->prepared().get()) : nullptr;
    if (kept != nullptr && !kept->serves(x, stem[0], n_blocks)) kept = nullptr;
    // The forward's output, made before the stages when they are prepared (its shape known). Made
    // by the head or the classifier, after the stages' megabytes had pushed the allocator's and the
    // dispatcher's state out of the caches and while the classifier's weight streamed in, it took
    // 6-25 us of the leader's time, the other threads waiting; here, through the dispatcher
    // (at::empty), 9.7 us at batch 1 right after a forward, and 5.1 us made directly (2-core Xeon,
    // medians of 1000 forwards), the other thread waiting for the stem's first job meanwhile.
    at::Tensor result;
    if (kept != nullptr)
      result = at::detail::empty_cpu({x.size(0), (classifier.empty() ? head : classifier)[1].size(0)},
                                     x.scalar_type(), /*pin_memory=*/false, /*memory_format_opt=*/std::nullopt);
    std::shared_ptr<PreparedStages> made;
    if (kept == nullptr) {
      made = std::make_shared<PreparedStages>();
      made->input = x.sizes().vec();
      made->threads = at::get_num_threads();
      made->stem_weight = stem[0].unsafeGetTensorImpl();
      // While a stage runs, its threads prefetch the next stage's weights: the later stages'
      // weights (0.3-1.6 MB each at MobileNetV2's width) are read from memory otherwise.
      made->warm.resize(n_blocks + 1);
      for (int64_t i = 0; i <= n_blocks; ++i) {
        int r = 0;
        auto add = [&](const at::Tensor& t) {
          if (t.has_storage() && t.is_contiguous()) made->warm[i][r++] = {t.data_ptr(), int64_t(t.nbytes())};
        };
        if (i == n_blocks) {
          add(head[0]);
        } else {
          for (int64_t j : {0, 2, 4})  // expand (none in t = 1 blocks), depthwise, projection
            if (const std::optional<at::Tensor> w = blocks.get(6 * i + j)) add(*w);
        }
      }
    }
    const PreparedStages& stages = kept != nullptr ? *kept : *made;
    Activations activations(arena, stages.outputs);
    std::optional<ChainScratch> chain;
    if (arena != nullptr) chain.emplace();
    // Block i's call, made ready for the stage before it as made already, its scratch per worker
    // at least allowed_floats where that is more than its own rule gives.
    auto prepare_block = [&](int64_t i, int64_t allowed_floats) {
      auto w = [&](int64_t j) { return blocks.get(6 * i + j); };
      const PreparedBlock& before = i == 0 ? made->stem : made->blocks[i - 1];
      return prepare_inverted_residual(made->shapes[i], w(0), w(1), *w(2), *w(3), *w(4), *w(5), &before,
                                       allowed_floats);
    };
    auto warm_stage = [&](int64_t i) {
      if (static_cast<size_t>(i) < stages.warm.size()) warm_while_computing(stages.warm[i]);
    };
    warm_stage(0);
    y = stage([] { return "stem+block 0"; }, [&] {
      if (made) {
        made->stem_shape = check_stem(x, stem[0], stem[1], stem_stride, stem[2], stem[3], stem[4], stem[5], stride);
        check_cpu_float(x, op);
        made->stem = prepare_stem_inverted_residual(made->stem_shape, stem[0], stem[1], stem[2], stem[3], stem[4],
                                                    stem[5]);
      }
      const BlockShape& s = stages.stem_shape.block;
      at::Tensor out = activations.output({s.n, s.cout, s.oh, s.ow}, x.options(), chain ? &*chain : nullptr);
      run_prepared(stages.stem, x, out);
      activations.stage_done(chain ? &*chain : nullptr);
      return out;
    });
    if (!chain) chain.emplace();
    for (int64_t i = 0; i < n_blocks; ++i) {
      // "block k" is torchvision's features[k + 1] (features[1], fused into the stem's stage, is block 0).
      warm_stage(i + 1);
      y = stage([&] { return "block " + std::to_string(i + 1); }, [&] {
        if (made) {
          auto w = [&](int64_t j) { return blocks.get(6 * i + j); };
          TORCH_CHECK_VALUE(w(2).has_value() && w(3).has_value() && w(4).has_value() && w(5).has_value(), op,
                            ": block ", i, " lacks a depthwise or projection weight");
          const bool residual = block_residuals[i] != 0;
          made->shapes.push_back(
              check_block(y, w(0), w(1), *w(2), *w(3), *w(4), *w(5), block_strides[i], residual));
          made->blocks.push_back(prepare_block(i, 0));
        }
        const BlockShape& s = stages.shapes[i];
        at::Tensor out = activations.output({s.n, s.cout, s.oh, s.ow}, y.options(), &*chain);
        run_prepared(stages.blocks[i], y, out);
        activations.stage_done(&*chain);
        return out;
      });
    }
    if (made && arena != nullptr) {
      // The arena will hold the most any stage held, rounded up to whole huge pages where it lies
      // in them (arena_floats_for), and a stage holds its input and output there and its scratch
      // in between: later forwards give a stage what its input and output leave of the arena as
      // scratch where that lets it run bands of whole rows instead of strips (halo columns
      // computed twice, short rows). The stem's stage holds only its output (at 224x224 block 1
      // holds the stem's output, its own and its scratch); in a huge page, block 1 takes the
      // page's rest too (0.82 MiB at batch 1). Other plans the larger budgets would pick are not
      // taken: at batch 1 they made block 3 1.05x slower.
      const int64_t floats = arena_floats_for(activations.most_held()) / Activations::kLine * Activations::kLine;
      auto floats_of = [](const BlockShape& s) { return Activations::floats_of({s.n, s.cout, s.oh, s.ow}); };
      const int64_t stem_out = floats_of(made->stem_shape.block);
      const int64_t per_worker = (floats - stem_out) / made->stem.threads;
      if (per_worker > made->stem.budget)
        made->stem = prepare_stem_inverted_residual(made->stem_shape, stem[0], stem[1], stem[2], stem[3], stem[4],
                                                    stem[5], per_worker);
      // Each block again, in order: a block's plan weighs how the one before split the image.
      int64_t in = stem_out;
      for (int64_t i = 0; i < n_blocks; ++i) {
        const int64_t out = floats_of(made->shapes[i]);
        PreparedBlock own = prepare_block(i, 0);
        PreparedBlock wider = prepare_block(i, std::max<int64_t>(0, floats - in - out) / own.threads);
        made->blocks[i] = std::move(wider.plan.strips < own.plan.strips ? wider : own);
        in = out;
      }
      arena->keep(made, made->kept_bytes());
    }
    chain.reset();  // before the head, whose output may be the forward's
    y = stage([] { return "head+pool"; }, [&] {
      if (made) check_pointwise_pool(y, head[0], head[1]);
      const bool last = classifier.empty();
      const int64_t n = y.size(0), c = head[1].size(0);
      at::Tensor out = !last ? activations.output({n, c}, y.options(), nullptr)
                             : result.defined() ? result : at::empty({n, c}, y.options());
      pointwise_relu6_mean_into(y, head[0], head[1], last ? nullptr : &classifier[0], out);
      if (!last) activations.stage_done(nullptr);
      return out;
    });
    if (!classifier.empty())
      y = stage([] { return "classifier"; }, [&] {
        if (made) check_linear(y, classifier[0], classifier[1]);
        at::Tensor out = result.defined() ? result : at::empty({y.size(0), classifier[1].size(0)}, y.options());
        linear_into(y, classifier[0], classifier[1], Act::kNone, out);
        return out;
      });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(mnv2_fused, CPU, m) { m.impl("mobilenet_v2_forward", &mobilenet_v2_forward); }

}  // namespace cpu
}  // namespace mnv2_fused
