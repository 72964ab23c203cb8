// torch.classes.mnv2_fused.VersionSnapshot: the version counters of a set of tensors, compared in
// C++. A converted network's weight cache checks ~300 parameters and buffers on every forward;
// reading their versions from Python walks as many Python objects, and the kernels that run right
// after it measurably slow down (their working set was pushed out of the caches). Here a check
// touches only the tensors' version counters and costs about a microsecond.
#include <torch/custom_class.h>
#include <torch/library.h>

#include <vector>

namespace mnv2_fused {
namespace {

struct VersionSnapshot : torch::CustomClassHolder {
  explicit VersionSnapshot(std::vector<at::Tensor> tensors) : tensors_(std::move(tensors)) {
    versions_.reserve(tensors_.size());
    for (const at::Tensor& t : tensors_) versions_.push_back(t._version());
  }

  // Whether no tensor has been written in place since the snapshot.
  bool unchanged() const {
    for (size_t i = 0; i < tensors_.size(); ++i)
      if (tensors_[i]._version() != versions_[i]) return false;
    return true;
  }

  // Kept alive so that a freed tensor's counter is never read.
  std::vector<at::Tensor> tensors_;
  std::vector<int64_t> versions_;
};

}  // namespace

TORCH_LIBRARY_FRAGMENT(mnv2_fused, m) {
  m.class_<VersionSnapshot>("VersionSnapshot")
      .def(torch::init<std::vector<at::Tensor>>())
      .def("unchanged", &VersionSnapshot::unchanged);
}

}  // namespace mnv2_fused
