// The Python module mnv2_fused._C. Importing it loads this library, whose static initializers
// register the ops (csrc/ops.cpp and each device's kernels). It also holds what keeps a fused
// module's per-forward bookkeeping out of Python (mnv2_fused/bound.py): right after a forward has
// streamed megabytes of weights through the caches, every Python object and code path a forward
// touches is a cache miss, and walking ~300 parameters' versions from Python, or parsing ~100
// weight tensors into an op call, costs a measurable share of a batch-1 forward.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/extension.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "cpu/forward_arena.h"
#include "cpu/huge_pages.h"
#include "scope_timer.h"

namespace mnv2_fused {
namespace {

// The version counters of some tensors at construction, and whether any moved since. Inference
// tensors have none: the caller leaves them out. The counters are held themselves (shared with
// their tensors, alive as long as this holds them): reading one is a load or two, where asking the
// tensor (Tensor::_version) took a virtual call and a chain of dependent loads, each a cache miss
// right after a forward. Checking a converted MobileNetV2's counters there took 33-42 us that way,
// 20 us this way (benchmarks/stages.py, batch 1, two Zen 3 cores).
class VersionSnapshot {
 public:
  explicit VersionSnapshot(const std::vector<at::Tensor>& tensors) {
    counters_.reserve(tensors.size());
    versions_.reserve(tensors.size());
    for (const at::Tensor& t : tensors) {
      counters_.push_back(t.unsafeGetTensorImpl()->version_counter());
      versions_.push_back(counters_.back().current_version());
    }
  }

  bool unchanged() const {
    for (size_t i = 0; i < counters_.size(); ++i)
      if (counters_[i].current_version() != versions_[i]) return false;
    return true;
  }

 private:
  std::vector<c10::VariableVersion> counters_;
  std::vector<uint32_t> versions_;
};

// Whether a tensor's dispatch keys, less those of autograd and autocast, are the CPU kernels' alone.
bool cpu_keys(c10::DispatchKeySet keys) {
  return (keys - c10::autograd_dispatch_keyset_with_ADInplaceOrView - c10::autocast_dispatch_keyset) ==
         c10::DispatchKeySet(c10::DispatchKey::CPU);
}

// The input of a bound call when the call may serve it: a float32 CPU tensor of `dim` dimensions
// (4: images, 2: rows of features) with the bound weights' input channels in dim 1, autograd off
// (the op records nothing for it), and none of the tensors the weights were folded from written
// since. nullopt otherwise: the module then takes its full path (FX proxies, gradients to compute,
// wrong inputs, a refold), which says what is wrong.
std::optional<at::Tensor> bound_input(pybind11::handle input, int64_t in_channels, const VersionSnapshot& versions,
                                      int64_t dim = 4) {
  if (!THPVariable_Check(input.ptr()) || at::GradMode::is_enabled()) return std::nullopt;
  at::Tensor x = THPVariable_Unpack(input.ptr());
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || x.dim() != dim || x.size(1) != in_channels ||
      !versions.unchanged())
    return std::nullopt;
  return x;
}

// A converted MobileNetV2's folded weights bound to mnv2_fused::mobilenet_v2_forward, the
// versions of the tensors they were folded from, and the arena its forwards lay their activations
// in (cpu/forward_arena.h), kept between them: the model's one piece of memory beyond its weights.
class NetworkCall {
 public:
  NetworkCall(std::shared_ptr<VersionSnapshot> versions, int64_t in_channels, std::vector<at::Tensor> stem, int64_t stem_stride,
              int64_t stride, std::vector<std::optional<at::Tensor>> blocks, std::vector<int64_t> block_strides,
              std::vector<int64_t> block_residuals, std::vector<at::Tensor> head, std::vector<at::Tensor> classifier)
      : versions_(std::move(versions)),
        in_channels_(in_channels),
        stem_(std::move(stem)),
        stem_stride_(stem_stride),
        stride_(stride),
        block_strides_(std::move(block_strides)),
        block_residuals_(std::move(block_residuals)),
        head_(std::move(head)),
        classifier_(std::move(classifier)) {
    TORCH_CHECK(versions_, "mnv2_fused: a bound call needs a version snapshot");
    for (auto& b : blocks) blocks_.push_back(std::move(b));
    auto plain = [](const at::Tensor& t) { return cpu_keys(t.key_set()); };
    plain_weights_ = std::all_of(stem_.begin(), stem_.end(), plain) &&
                     std::all_of(head_.begin(), head_.end(), plain) &&
                     std::all_of(classifier_.begin(), classifier_.end(), plain);
    for (const std::optional<at::Tensor>& b : blocks_) plain_weights_ = plain_weights_ && (!b || plain(*b));
  }

  // The network's output for x, or nullopt (see bound_input).
  std::optional<at::Tensor> operator()(pybind11::handle input) const {
    const std::optional<at::Tensor> in = bound_input(input, in_channels_, *versions_);
    if (!in) return std::nullopt;
    const at::Tensor& x = *in;
    pybind11::gil_scoped_release no_gil;
    // Through the dispatcher, so profilers and dispatch modes see the op as from Python; below
    // autograd, whose fallback for an op without a derivative boxes every argument (some 110
    // tensors here) only to find that nothing needs a gradient (bound_input checked that).
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("mnv2_fused::mobilenet_v2_forward", "")
            .typed<at::Tensor(const at::Tensor&, at::TensorList, int64_t, int64_t,
                              const c10::List<std::optional<at::Tensor>>&, at::IntArrayRef, at::IntArrayRef,
                              at::TensorList, at::TensorList)>();
    // One forward at a time in the arena; one that finds it taken runs without it.
    std::unique_lock<std::mutex> arena_lock(arena_mutex_, std::try_to_lock);
    cpu::ForwardArena* const arena = arena_lock.owns_lock() ? &arena_ : nullptr;
    at::Tensor y;
    {
      const cpu::ArenaScope scope(arena);
      // The dispatcher would read the keys of every tensor argument (about 110, each a cache miss
      // right after a forward: 6-10 us) to find the CPU kernel, and, while a profiler records, open
      // the op's scope. When x and the weights are plain CPU tensors, no dispatch mode or other
      // dispatch key is on and nothing records, it goes straight to that kernel.
      // (BackendSelect, always on, has no kernel for the op.)
      const c10::impl::LocalDispatchKeySet tls = c10::impl::tls_local_dispatch_key_set();
      const c10::DispatchKeySet keys = (x.key_set() | tls.included_) - tls.excluded_ -
                                       c10::DispatchKeySet(c10::DispatchKey::BackendSelect);
      if (plain_weights_ && keys == c10::DispatchKeySet(c10::DispatchKey::CPU) &&
          !at::getStepCallbacksUnlessEmpty(at::RecordScope::FUNCTION).has_value())
        y = op.redispatch(keys, x, stem_, stem_stride_, stride_, blocks_, block_strides_, block_residuals_, head_,
                          classifier_);
      else
        y = op.call(x, stem_, stem_stride_, stride_, blocks_, block_strides_, block_residuals_, head_, classifier_);
    }
    if (arena != nullptr) arena->fit();
    return y;
  }

  // Bytes held between forwards: the arena.
  int64_t workspace_bytes() const {
    const std::lock_guard<std::mutex> lock(arena_mutex_);
    return arena_.bytes();
  }

  // Frees the arena; the next forward runs without one and sizes it again.
  void release_workspace() const {
    const std::lock_guard<std::mutex> lock(arena_mutex_);
    arena_.release();
  }

 private:
  std::shared_ptr<VersionSnapshot> versions_;
  int64_t in_channels_;
  std::vector<at::Tensor> stem_;
  int64_t stem_stride_, stride_;
  c10::List<std::optional<at::Tensor>> blocks_;
  std::vector<int64_t> block_strides_, block_residuals_;
  std::vector<at::Tensor> head_, classifier_;
  bool plain_weights_ = false;  // every weight a CPU tensor with no dispatch key beyond autograd's
  mutable std::mutex arena_mutex_;
  mutable cpu::ForwardArena arena_;
};

// A fused module's folded weights and settings bound to its op (a block's inverted_residual or
// mbconv; a layer's conv3x3, pointwise or linear): every argument after x, converted once to the
// op's schema types, and the versions of the tensors the weights were folded from. A call pushes x
// in front of them and runs the op boxed.
class OpCall {
 public:
  OpCall(std::shared_ptr<VersionSnapshot> versions, const std::string& op_name, int64_t in_channels,
         const pybind11::list& rest, int64_t input_dim)
      : versions_(std::move(versions)),
        op_(c10::Dispatcher::singleton().findSchemaOrThrow(op_name.c_str(), "")),
        in_channels_(in_channels),
        input_dim_(input_dim) {
    TORCH_CHECK(versions_, "mnv2_fused: a bound call needs a version snapshot");
    const auto& arguments = op_.schema().arguments();
    TORCH_CHECK(rest.size() + 1 == arguments.size(), "mnv2_fused: ", op_name, " takes ", arguments.size(),
                " arguments, got x and ", rest.size());
    for (size_t i = 0; i < rest.size(); ++i) args_.push_back(torch::jit::toIValue(rest[i], arguments[i + 1].real_type()));
  }

  // The op's output for x, or nullopt (see bound_input).
  std::optional<at::Tensor> operator()(pybind11::handle input) const {
    const std::optional<at::Tensor> in = bound_input(input, in_channels_, *versions_, input_dim_);
    if (!in) return std::nullopt;
    const at::Tensor& x = *in;
    pybind11::gil_scoped_release no_gil;
    const at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in NetworkCall
    torch::jit::Stack stack;
    stack.reserve(args_.size() + 1);
    stack.emplace_back(x);
    stack.insert(stack.end(), args_.begin(), args_.end());
    op_.callBoxed(&stack);
    return stack[0].toTensor();
  }

 private:
  std::shared_ptr<VersionSnapshot> versions_;
  c10::OperatorHandle op_;
  std::vector<c10::IValue> args_;
  int64_t in_channels_, input_dim_;
};

}  // namespace
}  // namespace mnv2_fused

PYBIND11_MODULE(_C, m) {
  using mnv2_fused::NetworkCall;
  using mnv2_fused::VersionSnapshot;
  pybind11::class_<VersionSnapshot, std::shared_ptr<VersionSnapshot>>(m, "VersionSnapshot")
      .def(pybind11::init<const std::vector<at::Tensor>&>())
      .def("unchanged", &VersionSnapshot::unchanged);
  pybind11::class_<NetworkCall>(m, "NetworkCall")
      .def(pybind11::init<std::shared_ptr<VersionSnapshot>, int64_t, std::vector<at::Tensor>, int64_t, int64_t,
                          std::vector<std::optional<at::Tensor>>, std::vector<int64_t>, std::vector<int64_t>,
                          std::vector<at::Tensor>, std::vector<at::Tensor>>())
      .def("__call__", &NetworkCall::operator())
      .def("workspace_bytes", &NetworkCall::workspace_bytes)
      .def("release_workspace", &NetworkCall::release_workspace);
  pybind11::class_<mnv2_fused::OpCall>(m, "OpCall")
      .def(pybind11::init<std::shared_ptr<VersionSnapshot>, const std::string&, int64_t, const pybind11::list&,
                          int64_t>(),
           pybind11::arg("versions"), pybind11::arg("op"), pybind11::arg("in_channels"), pybind11::arg("rest"),
           pybind11::arg("input_dim") = 4)
      .def("__call__", &mnv2_fused::OpCall::operator());
  m.def("copies_in_huge_pages", &mnv2_fused::cpu::copies_in_huge_pages, pybind11::arg("tensors"),
        "Copies of the dense float32 CPU tensors (strides kept) in one mapping of huge pages (where they come to 1 MiB "
        "or more and the system offers them); the others, or all where not, as they are.");
  m.def("start_scope_timer", &mnv2_fused::scope_timer::start, pybind11::arg("prefix"));
  m.def("stop_scope_timer", &mnv2_fused::scope_timer::stop);
}
