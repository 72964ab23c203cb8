// Wall time of the profiler scopes whose names start with a prefix, on the calling thread, without
// the profiler: a thread-local RecordFunction callback that keeps only those scopes' durations.
// benchmarks/stages.py times the stages inside the network op (csrc/cpu/network.cpp) with it.
// Under torch.profiler, whose callbacks record every op on every thread, a 2-core machine ran the
// first stage 1.2-2.4x slower than hot, from one forward to the next (on one thread too).
//
// The state is the thread's own, not an object's, so nothing a caller drops on another thread can
// leave the callback pointing at freed memory.
//
// A scope also counts the team jobs (csrc/cpu/team.h) its thread led while it was open: how many,
// how long the leader waited for the other threads' chunks of them, and how much of the scope ran
// outside any job (the leader's serial work, while the team's other threads wait for the next one).
#pragma once
#include <ATen/record_function.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace mnv2_fused {
namespace scope_timer {

using Clock = std::chrono::steady_clock;

// One closed scope: its wall time, and the team jobs led on its thread while it was open.
struct Closed {
  std::string name;
  double seconds = 0;
  int64_t jobs = 0;
  double waiting = 0;       // the leader waiting for the other threads' chunks, over those jobs
  double outside_jobs = 0;  // the scope's time outside every job
};

// A team job as its leader saw it: handed out, its own chunks done, every chunk done.
struct Job {
  Clock::time_point start, own_done, end;
};

struct State {
  bool running = false;
  std::string prefix;
  at::CallbackHandle handle = 0;
  std::vector<Closed> closed;  // in the order they closed
  std::vector<Job> jobs;       // led while a timer runs, in order
};

inline State& state() {
  static thread_local State s;
  return s;
}

struct Started : at::ObserverContext {
  Clock::time_point at = Clock::now();
  size_t first_job = 0;
};

// PyTorch carries thread-local callbacks into the parallel regions the scopes open; there no timer
// runs and the callback returns at once.
inline std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  const State& s = state();
  if (!s.running || std::strncmp(fn.name(), s.prefix.c_str(), s.prefix.size()) != 0) return nullptr;
  auto started = std::make_unique<Started>();
  started->first_job = s.jobs.size();
  return started;
}

inline void on_end(const at::RecordFunction& fn, at::ObserverContext* started) {
  State& s = state();
  if (!s.running || started == nullptr) return;
  const auto* begun = static_cast<Started*>(started);
  auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  Closed c{fn.name(), seconds(Clock::now() - begun->at)};
  double in_jobs = 0;
  for (size_t j = begun->first_job; j < s.jobs.size(); ++j, ++c.jobs) {
    c.waiting += seconds(s.jobs[j].end - s.jobs[j].own_done);
    in_jobs += seconds(s.jobs[j].end - s.jobs[j].start);
  }
  c.outside_jobs = c.seconds - in_jobs;
  s.closed.push_back(std::move(c));
}

// A team job that the calling thread led (nothing unless a timer runs on it).
inline void job_done(const Job& job) {
  State& s = state();
  if (s.running) s.jobs.push_back(job);
}

// Starts timing the scopes named prefix... on the calling thread (one timing at a time per thread).
inline void start(std::string prefix) {
  State& s = state();
  TORCH_CHECK(!s.running, "mnv2_fused: a scope timer is already running on this thread");
  s.prefix = std::move(prefix);
  s.closed.clear();
  s.jobs.clear();
  s.handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback(&on_start, &on_end).scopes({at::RecordScope::FUNCTION}));
  s.running = true;
}

// Stops it; the scopes closed since start, (name, seconds, jobs, waiting seconds, seconds outside
// jobs) in the order they closed.
inline std::vector<std::tuple<std::string, double, int64_t, double, double>> stop() {
  State& s = state();
  TORCH_CHECK(s.running, "mnv2_fused: no scope timer is running on this thread");
  at::removeCallback(s.handle);
  s.running = false;
  s.jobs.clear();
  std::vector<std::tuple<std::string, double, int64_t, double, double>> out;
  for (Closed& c : s.closed) out.emplace_back(std::move(c.name), c.seconds, c.jobs, c.waiting, c.outside_jobs);
  s.closed.clear();
  return out;
}

}  // namespace scope_timer
}  // namespace mnv2_fused
