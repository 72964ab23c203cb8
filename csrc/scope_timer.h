// Wall time of the profiler scopes whose names start with a prefix, on the calling thread, without
// the profiler: a thread-local RecordFunction callback that keeps only those scopes' durations.
// benchmarks/stages.py times the stages inside the network op (csrc/cpu/network.cpp) with it.
// Under torch.profiler, whose callbacks record every op on every thread, a 2-core machine ran the
// first stage 1.2-2.4x slower than hot, from one forward to the next (on one thread too).
//
// The state is the thread's own, not an object's, so nothing a caller drops on another thread can
// leave the callback pointing at freed memory.
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
namespace scope_timer {

using Clock = std::chrono::steady_clock;

struct State {
  bool running = false;
  std::string prefix;
  at::CallbackHandle handle = 0;
  std::vector<std::pair<std::string, double>> closed;  // (name, seconds), in the order they closed
};

inline State& state() {
  static thread_local State s;
  return s;
}

struct Started : at::ObserverContext {
  Clock::time_point at = Clock::now();
};

// PyTorch carries thread-local callbacks into the parallel regions the scopes open; there no timer
// runs and the callback returns at once.
inline std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  const State& s = state();
  if (!s.running || std::strncmp(fn.name(), s.prefix.c_str(), s.prefix.size()) != 0) return nullptr;
  return std::make_unique<Started>();
}

inline void on_end(const at::RecordFunction& fn, at::ObserverContext* started) {
  State& s = state();
  if (!s.running || started == nullptr) return;
  const auto begun = static_cast<Started*>(started)->at;
  s.closed.emplace_back(fn.name(), std::chrono::duration<double>(Clock::now() - begun).count());
}

// Starts timing the scopes named prefix... on the calling thread (one timing at a time per thread).
inline void start(std::string prefix) {
  State& s = state();
  TORCH_CHECK(!s.running, "mnv2_fused: a scope timer is already running on this thread");
  s.prefix = std::move(prefix);
  s.closed.clear();
  s.handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(&on_start, &on_end).scopes({at::RecordScope::FUNCTION}));
  s.running = true;
}

// Stops it; the scopes closed since start, (name, seconds) in the order they closed.
inline std::vector<std::pair<std::string, double>> stop() {
  State& s = state();
  TORCH_CHECK(s.running, "mnv2_fused: no scope timer is running on this thread");
  at::removeCallback(s.handle);
  s.running = false;
  return std::move(s.closed);
}

}  // namespace scope_timer
}  // namespace mnv2_fused
