#include "worker_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace mnv2_fused {
namespace cpu {
namespace {

// How long an idle helper watches for the next call before it sleeps: the stages of a forward
// follow each other within microseconds, and a sleeping helper takes a futex wake to start.
constexpr std::chrono::microseconds kSpinFor{50};

struct Job {
  int64_t items, run, threads;
  const RunFn* fn;
  std::atomic<int64_t> next{0};
  int64_t slots = 1;            // slots handed out (the caller has 0); under Pool::mutex
  std::atomic<int> active{0};   // helpers inside this job
};

class Pool {
 public:
  void run(Job& job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      grow(job.threads - 1);
      job_ = &job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    claim(job, 0);
    {
      // No helper joins after this; those that joined are counted in `active`.
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = nullptr;
    }
    while (job.active.load(std::memory_order_acquire) > 0) std::this_thread::yield();
  }

 private:
  static void claim(Job& job, int64_t slot) {
    for (int64_t begin = job.next.fetch_add(job.run); begin < job.items; begin = job.next.fetch_add(job.run))
      (*job.fn)(slot, begin, std::min(job.items, begin + job.run));
  }

  void grow(int64_t helpers) {
    while (static_cast<int64_t>(helpers_.size()) < helpers) {
      helpers_.emplace_back([this] { helper(); });
      helpers_.back().detach();  // lives as long as the process (a forked child makes a new pool)
    }
  }

  void helper() {
    uint64_t seen = generation_.load(std::memory_order_acquire);
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kSpinFor;
      while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < until) {
      }
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      seen = generation_.load(std::memory_order_acquire);
      Job* job = job_;
      if (job == nullptr || job->slots >= job->threads) continue;
      const int64_t slot = job->slots++;
      job->active.fetch_add(1, std::memory_order_acq_rel);
      lock.unlock();
      claim(*job, slot);
      job->active.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  Job* job_ = nullptr;
  std::vector<std::thread> helpers_;
};

Pool* pool = nullptr;
std::mutex pool_busy;  // one call at a time uses the helpers

Pool& the_pool() {
  static std::once_flag once;
  std::call_once(once, [] {
    pool = new Pool();
    // A forked child has none of the helper threads: it starts a pool of its own (the old one,
    // whose threads do not exist there, is left alone).
    pthread_atfork(nullptr, nullptr, [] { pool = new Pool(); });
  });
  return *pool;
}

}  // namespace

void parallel_runs(int64_t items, int64_t run, int64_t threads, const RunFn& fn) {
  if (items <= 0) return;
  run = std::max<int64_t>(1, run);
  std::unique_lock<std::mutex> busy(pool_busy, std::try_to_lock);
  if (threads <= 1 || items <= run || !busy.owns_lock()) {
    for (int64_t begin = 0; begin < items; begin += run) fn(0, begin, std::min(items, begin + run));
    return;
  }
  Job job;
  job.items = items, job.run = run, job.threads = threads, job.fn = &fn;
  the_pool().run(job);
}

}  // namespace cpu
}  // namespace mnv2_fused
