// Wall time of the profiler scopes whose names start with a prefix, on the calling thread, without
// the profiler: a thread-local RecordFunction callback that keeps only those scopes' durations.
// benchmarks/stages.py times the stages inside the network op (csrc/cpu/network.cpp) with it.
// Under torch.profiler, whose callbacks record every op on every thread, a 2-core machine ran the
// first stage 1.2-2.4x slower than hot, from one forward to the next (on one thread too).
#pragma once
#include <ATen/record_function.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mnv2_fused {

class ScopeTimer {
 public:
  explicit ScopeTimer(std::string prefix) : prefix_(std::move(prefix)) {}
  ScopeTimer(const ScopeTimer&) = delete;
  ScopeTimer& operator=(const ScopeTimer&) = delete;
  ~ScopeTimer() {
    if (active() == this) stop();
  }

  // Starts timing on the calling thread (one timer per thread at a time).
  void start() {
    TORCH_CHECK(active() == nullptr, "mnv2_fused: a scope timer is already running on this thread");
    closed_.clear();
    handle_ = at::addThreadLocalCallback(
        at::RecordFunctionCallback(&on_start, &on_end).scopes({at::RecordScope::FUNCTION}));
    active() = this;
  }

  // Stops timing; the scopes closed since start(), (name, seconds) in the order they closed.
  std::vector<std::pair<std::string, double>> stop() {
    TORCH_CHECK(active() == this, "mnv2_fused: this scope timer is not running on this thread");
    at::removeCallback(handle_);
    active() = nullptr;
    return std::move(closed_);
  }

 private:
  using Clock = std::chrono::steady_clock;
  struct Started : at::ObserverContext {
    Clock::time_point at = Clock::now();
  };

  // The thread's running timer. The callback also reaches the threads of the parallel regions the
  // scopes open (PyTorch carries thread-local callbacks into them), where none runs.
  static ScopeTimer*& active() {
    static thread_local ScopeTimer* timer = nullptr;
    return timer;
  }

  static std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
    const ScopeTimer* timer = active();
    if (timer == nullptr || std::strncmp(fn.name(), timer->prefix_.c_str(), timer->prefix_.size()) != 0)
      return nullptr;
    return std::make_unique<Started>();
  }

  static void on_end(const at::RecordFunction& fn, at::ObserverContext* started) {
    ScopeTimer* timer = active();
    if (timer == nullptr || started == nullptr) return;
    const auto begun = static_cast<Started*>(started)->at;
    timer->closed_.emplace_back(fn.name(), std::chrono::duration<double>(Clock::now() - begun).count());
  }

  std::string prefix_;
  at::CallbackHandle handle_ = 0;
  std::vector<std::pair<std::string, double>> closed_;
};

}  // namespace mnv2_fused
