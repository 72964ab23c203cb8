#include "team.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <time.h>
#include <unistd.h>

#include "../scope_timer.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace mnv2_fused {
namespace cpu {
namespace {

// How long a waiting thread spins before it sleeps. Longer than the gap between two stages of a
// forward (allocating the next output, looking up its plan: a few microseconds) and than the
// usual wait for the last chunk, far shorter than a scheduler's time slice.
// Measured at batch 1: spinning 0 or 10 us took a quiet forward from 3.3 or 3.0 ms to 4.9 or 3.6
// (a stage often finds its helper asleep). In a virtual machine (Zen 3, AVX2) 50 us still let a
// thread sleep 8 times a batch-1 forward and 19 times a batch-8 one (each sleep a wake-up through
// the host), 300 us 0.2 and 2.2 times: forwards 1.02-1.04x faster at batch 1 and 1.01-1.02x at
// batch 8, and with another process on one of the cores as fast as with 50 us (1000 us: batch 8
// 1.1x slower there). Under load the chains mostly run reduced (Contention below), where no
// thread waits on another.
constexpr std::chrono::microseconds kSpin{300};

void pause() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// Spins until ready() for up to kSpin, then sleeps on `cv` until it holds. `sleepers` is
// raised before the check under the lock: whoever makes ready() true and then reads `sleepers`
// either sees the sleeper and notifies under the lock, or made it true before that check.
template <class Ready>
void wait_until(const Ready& ready, std::mutex& mutex, std::condition_variable& cv, std::atomic<int>& sleepers) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  while (!ready()) {
    if (std::chrono::steady_clock::now() >= until) {
      sleepers.fetch_add(1);
      {
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait(lock, ready);
      }
      sleepers.fetch_sub(1);
      return;
    }
    for (int i = 0; i < 32; ++i) pause();
  }
}

void wake(std::mutex& mutex, std::condition_variable& cv, const std::atomic<int>& sleepers) {
  if (sleepers.load() == 0) return;
  std::lock_guard<std::mutex> lock(mutex);
  cv.notify_all();
}

// A job's claims are one 64-bit ticket: generation, chunk count and next chunk, so a thread that
// claims a chunk knows in the same atomic step that the chunk belongs to the job it saw.
constexpr int kIndexBits = 20;
constexpr uint64_t kIndexMask = (uint64_t(1) << kIndexBits) - 1;
uint64_t generation(uint64_t t) { return t >> (2 * kIndexBits); }
int64_t chunks_of(uint64_t t) { return static_cast<int64_t>((t >> kIndexBits) & kIndexMask); }
int64_t next_of(uint64_t t) { return static_cast<int64_t>(t & kIndexMask); }

thread_local WarmCursor* chunk_cursor = nullptr;  // the thread's prefetches while it runs a team's chunk

class Team {
 public:
  explicit Team(int64_t size) : size_(size), cursors_(static_cast<size_t>(size)) {}

  // The leader: hands out [begin, end) in chunks, runs what it claims, and returns when every
  // chunk is done (rethrowing the first exception a chunk threw).
  void run(int64_t begin, int64_t end, int64_t grain, c10::function_ref<void(int64_t, int64_t)> f) {
    int64_t chunks = size_;
    if (grain > 0) chunks = std::min(chunks, (end - begin + grain - 1) / grain);
    job_begin_ = begin, job_end_ = end, chunk_ = (end - begin + chunks - 1) / chunks, f_ = &f;
    chunks = (end - begin + chunk_ - 1) / chunk_;
    done_.store(0);
    const uint64_t gen = generation(ticket_.load()) + 1;
    const uint64_t ticket = (gen << (2 * kIndexBits)) | (static_cast<uint64_t>(chunks) << kIndexBits);
    // Timed for benchmarks/stages.py when a scope timer runs on this thread (scope_timer.h).
    const bool timed = scope_timer::state().running;
    scope_timer::Job job;
    if (timed) job.start = scope_timer::Clock::now();
    ticket_.store(ticket);
    wake(mutex_, helpers_cv_, helpers_asleep_);
    claim(gen, 0);
    if (timed) job.own_done = scope_timer::Clock::now();
    wait_until([&] { return done_.load() == chunks; }, mutex_, leader_cv_, leader_asleep_);
    if (timed) {
      job.end = scope_timer::Clock::now();
      scope_timer::job_done(job);
    }
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

  // A helper of rank `rank` (1 up): runs the chunks it claims until the leader stops the team.
  void serve(int64_t rank) {
    uint64_t seen = 0;
    for (;;) {
      wait_until([&] { return stopped_.load() || generation(ticket_.load()) != seen; }, mutex_, helpers_cv_,
                 helpers_asleep_);
      if (stopped_.load()) return;
      seen = generation(ticket_.load());
      claim(seen, rank);
    }
  }

  void stop() {
    stopped_.store(true);
    wake(mutex_, helpers_cv_, helpers_asleep_);
  }

  // Cuts the ranges into the threads' shares (warm_while_computing). Called by the leader
  // between jobs: a helper reads its cursor only inside a chunk, and the job's ticket orders the
  // two.
  void set_warm(const std::array<MemoryRange, kWarmRanges>& ranges) {
    for (int64_t r = 0; r < size_; ++r) {
      WarmCursor& c = cursors_[r].cursor;
      c.run = 0;
      for (int i = 0; i < kWarmRanges; ++i) {
        const char* begin = static_cast<const char*>(ranges[i].begin);
        const int64_t bytes = begin != nullptr ? ranges[i].bytes : 0;
        // Shares of whole cache lines (but for a range's end).
        c.next[i] = begin + bytes * r / size_ / 64 * 64;
        c.end[i] = r + 1 == size_ ? begin + bytes : begin + bytes * (r + 1) / size_ / 64 * 64;
      }
    }
  }

 private:
  // Claims and runs chunks of job `gen` as the thread of rank `rank`.
  void claim(uint64_t gen, int64_t rank) {
    WarmCursor* const cursor_before = chunk_cursor;
    chunk_cursor = &cursors_[rank].cursor;
    uint64_t t = ticket_.load();
    while (generation(t) == gen && next_of(t) < chunks_of(t)) {
      if (!ticket_.compare_exchange_weak(t, t + 1)) continue;
      // The job cannot finish before this chunk does, so its fields stay as the leader set them.
      const int64_t b = job_begin_ + next_of(t) * chunk_;
      try {
        (*f_)(b, std::min(job_end_, b + chunk_));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      if (done_.fetch_add(1) + 1 == chunks_of(t)) wake(mutex_, leader_cv_, leader_asleep_);
      t = ticket_.load();
    }
    chunk_cursor = cursor_before;
  }

  // Each thread's prefetches on a cache line of their own.
  struct alignas(64) OwnCursor {
    WarmCursor cursor;
  };

  const int64_t size_;
  std::atomic<uint64_t> ticket_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<bool> stopped_{false};
  int64_t job_begin_ = 0, job_end_ = 0, chunk_ = 1;
  const c10::function_ref<void(int64_t, int64_t)>* f_ = nullptr;
  std::exception_ptr error_;
  std::mutex mutex_;
  std::condition_variable helpers_cv_, leader_cv_;
  std::atomic<int> helpers_asleep_{0}, leader_asleep_{0};
  std::vector<OwnCursor> cursors_;  // per rank
};

thread_local Team* led_team = nullptr;  // the team this thread leads, inside run_as_team
thread_local bool in_chunk = false;     // running a chunk: nested calls run where they are
thread_local bool alone = false;        // leading a chain on one thread

// Sets a thread-local flag for the scope (an exception included).
class Raised {
 public:
  explicit Raised(bool& flag) : flag_(flag) { flag_ = true; }
  ~Raised() { flag_ = false; }

 private:
  bool& flag_;
};

// CPU time of the calling thread.
std::chrono::nanoseconds thread_cpu_time() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec);
}

// Time the machine's CPUs have spent idle since boot, added over all of them (Linux's /proc/stat,
// in clock ticks); negative where it cannot be read.
std::chrono::milliseconds machine_idle_time() {
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (f == nullptr) return std::chrono::milliseconds(-1);
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0;
  const int read = std::fscanf(f, "cpu %llu %llu %llu %llu %llu", &user, &nice, &system, &idle, &iowait);
  std::fclose(f);
  const long ticks = sysconf(_SC_CLK_TCK);
  if (read != 5 || ticks <= 0) return std::chrono::milliseconds(-1);
  return std::chrono::milliseconds(static_cast<long long>((idle + iowait) * 1000 / ticks));
}

// Whether chains run reduced (one thread fewer: on two threads, the calling thread alone) for a
// while, because another process holds one of the cores. Measured at batch 1 with a process
// spinning on one of two cores: two threads took 6-12 ms a forward (a helper, once the other
// process holds its core, runs again only when the scheduler next balances, milliseconds later,
// however the leader waits), one thread 5.7 ms, against 2.9 ms for two threads on a quiet machine.
// The sign is the leader's time off its core: it spins while it waits, so on a quiet machine it
// is off its core for a few percent of a chain, under load for half or more. After two such
// chains in a row the chains run reduced for 100 ms (and at least four chains' time), then as full
// teams again: two more contended chains in a row send them back for twice as long (up to 400 ms),
// one clean chain starts over. A reduced run ends early once the machine's CPUs, added together,
// have been idle for half of its time so far (a core left free: the other process is gone);
// otherwise a brief load, or the spinning workers of another runtime in the same process, kept
// whole benchmarks of the network on one thread, up to 400 ms after the load had passed.
// In a virtual machine the leader is also off its core while the host runs another guest on it
// (steal time), and there one thread fewer may win or lose: at batch 1, with the host taking
// about 40% of this guest's time, a forward took 6.8-7.2 ms on full teams and 8.7-10.4 ms when
// sent reduced that often; at heavier steal, 11.6-12.2 ms full and 10.1-10.9 ms reduced. So the
// choice is measured, not assumed: the reduced chains' wall time is kept per thread count and work
// (the chain's input size), and two contended chains in a row send the chains reduced only when
// they took longer than the reduced chains of that work did last (or when there is no figure yet).
// With a process spinning on one of two cores, the chains still went reduced: a forward at batch
// 1 took 10.2 ms (9.5 ms always reduced, 15.4 ms always full), at batch 8 73 ms (66, 86).
class Contention {
  using Clock = std::chrono::steady_clock;

 public:
  bool run_reduced() {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = Clock::now();
    if (now >= reduced_until_) return false;
    if (idle0_.count() >= 0 && now - reduced_since_ >= kIdleCheckAfter) {
      const auto idle = machine_idle_time() - idle0_;
      if (idle * 2 >= now - reduced_since_) {
        reduced_until_ = now, backoff_ = std::chrono::milliseconds(0);
        return false;
      }
    }
    return true;
  }

  // A full team's chain of `work` on `threads`: its wall time and its leader's CPU time.
  void record(int64_t threads, int64_t work, Clock::duration wall, std::chrono::nanoseconds cpu) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto off = wall - cpu;
    const bool contended = off * 10 > wall * 3 && off > std::chrono::microseconds(200);
    if (!contended) {
      strikes_ = 0, backoff_ = std::chrono::milliseconds(0);
      return;
    }
    if (++strikes_ < 2) {
      first_strike_ = wall;
      return;
    }
    const auto it = reduced_wall_.find({threads, work});
    if (it != reduced_wall_.end() && first_strike_ + wall <= 2 * it->second) {  // full teams do no worse
      strikes_ = 0, backoff_ = std::chrono::milliseconds(0);
      return;
    }
    // Reduced for a while, and for at least a few chains as long as this one, so that long
    // chains (large batches) are not probed every other time.
    backoff_ = backoff_.count() == 0 ? kFirstRun : std::min(backoff_ * 2, kLongestRun);
    reduced_since_ = Clock::now();
    reduced_until_ = reduced_since_ + std::max<Clock::duration>(backoff_, 4 * wall);
    idle0_ = machine_idle_time();
    strikes_ = 0;
  }

  // A reduced chain of `work` planned for `threads`: its wall time into that work's figure (a
  // running average that follows the last few).
  void record_reduced(int64_t threads, int64_t work, Clock::duration wall) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::pair<int64_t, int64_t> key{threads, work};
    if (reduced_wall_.size() >= kMaxWorks && !reduced_wall_.count(key)) reduced_wall_.clear();
    const auto [it, fresh] = reduced_wall_.try_emplace(key, wall);
    if (!fresh) it->second = (3 * it->second + wall) / 4;
  }

 private:
  // /proc/stat counts in ticks (10 ms on most systems): the idle time is judged over 30 ms or more.
  static constexpr std::chrono::milliseconds kFirstRun{100}, kLongestRun{400}, kIdleCheckAfter{30};
  // Works whose reduced figure is kept; past this many (input sizes that vary call after call)
  // the figures start over.
  static constexpr size_t kMaxWorks = 64;
  std::mutex mutex_;
  Clock::time_point reduced_since_{}, reduced_until_{};
  std::chrono::milliseconds idle0_{-1};
  int strikes_ = 0;
  Clock::duration first_strike_{};        // the wall time of the first of two contended chains
  std::chrono::milliseconds backoff_{0};  // the last reduced run's length; 0 after a clean chain
  std::map<std::pair<int64_t, int64_t>, Clock::duration> reduced_wall_;  // per thread count and work
};

// MNV2_FUSED_CHAIN=full / reduced: every chain on all threads / on one thread fewer (read at every
// call); auto (the default) as Contention decides.
enum class ChainMode { kAuto, kFull, kReduced };
ChainMode chain_mode() {
  const char* v = std::getenv("MNV2_FUSED_CHAIN");
  if (v == nullptr || *v == 0) return ChainMode::kAuto;
  const std::string mode(v);
  TORCH_CHECK_VALUE(mode == "full" || mode == "reduced" || mode == "auto",
                    "mnv2_fused: MNV2_FUSED_CHAIN must be full, reduced or auto, got '", mode, "'");
  return mode == "full" ? ChainMode::kFull : mode == "reduced" ? ChainMode::kReduced : ChainMode::kAuto;
}

Contention& contention() {
  static Contention c;
  return c;
}

// Leads a team of `size` threads (at least 2) for body's stages, planned for `threads`.
void lead(int64_t size, int64_t threads, int64_t work, c10::function_ref<void()> body, bool measure) {
  Team team(threads);
  at::parallel_for(0, size, 1, [&](int64_t begin, int64_t end) {
    if (begin != 0) {  // a helper: the team's other threads
      team.serve(begin);
      return;
    }
    // The leader (the calling thread, or every index at once when the region runs on one thread).
    const auto wall0 = std::chrono::steady_clock::now();
    const auto cpu0 = thread_cpu_time();
    {
      // Led until body returns or throws; then the helpers leave.
      struct Leading {
        Team& team;
        explicit Leading(Team& t) : team(t) { led_team = &team; }
        ~Leading() {
          led_team = nullptr;
          team.stop();
        }
      } leading(team);
      body();
    }
    if (measure) contention().record(threads, work, std::chrono::steady_clock::now() - wall0, thread_cpu_time() - cpu0);
  });
}

}  // namespace

void run_as_team(int64_t threads, int64_t work, c10::function_ref<void()> body) {
  if (led_team != nullptr || alone || threads <= 1 || at::in_parallel_region() || at::get_num_threads() <= 1) {
    body();
    return;
  }
  TORCH_CHECK(threads < (int64_t(1) << kIndexBits), "mnv2_fused: too many threads for a team: ", threads);
  const ChainMode mode = chain_mode();
  const bool reduced = mode == ChainMode::kReduced || (mode == ChainMode::kAuto && contention().run_reduced());
  if (!reduced) return lead(threads, threads, work, body, mode == ChainMode::kAuto);
  // Reduced: the stages keep the tiling planned for all the threads (and so the same outputs);
  // whichever threads there are claim its chunks.
  const auto wall0 = std::chrono::steady_clock::now();
  if (threads > 2) {
    lead(threads - 1, threads, work, body, false);
  } else {
    Raised alone_for_now(alone);
    body();
  }
  if (mode == ChainMode::kAuto) contention().record_reduced(threads, work, std::chrono::steady_clock::now() - wall0);
}

void warm_while_computing(const std::array<MemoryRange, kWarmRanges>& ranges) {
  if (led_team != nullptr && !in_chunk) led_team->set_warm(ranges);
}

WarmCursor* warm_cursor() { return chunk_cursor; }

void team_parallel_for(int64_t begin, int64_t end, int64_t grain, c10::function_ref<void(int64_t, int64_t)> f) {
  if (begin >= end) return;
  if (alone) {
    f(begin, end);
    return;
  }
  Team* team = led_team;
  if (team == nullptr || in_chunk) {
    at::parallel_for(begin, end, grain, f);
    return;
  }
  if (end - begin <= grain || end - begin == 1) {
    f(begin, end);
    return;
  }
  Raised in_chunk_now(in_chunk);
  team->run(begin, end, grain, f);
}

}  // namespace cpu
}  // namespace mnv2_fused
