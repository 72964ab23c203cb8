// Memory that a whole network's forward lays its activations and scratch in, kept by the caller
// (a converted model's bound call) from one forward to the next.
//
// Why: a forward that allocates its activations anew gets them from malloc, which gives the top of
// its heap back to the system between forwards or maps large blocks afresh; the stem's output
// (0.77 MiB at batch 1) then lands on new pages and takes a page fault per 4 KiB on every forward
// (120-230 at batch 1, 550-1170 at batch 8, in most processes): up to 0.5 ms of a 4.3 ms forward.
// The runtimes keep their activations' memory the same way (an arena planned once).
//
// The arena is laid out as the forward goes (network.cpp): each stage's output at the end its
// input does not hold, the stage's scratch between the two, so its size is the most any one stage
// holds at once, which is the forward's peak without it. A forward records what it needed; the
// caller resizes the arena after it (fit), so the first forward of a shape runs without one. The
// arena also keeps what the forward made ready for its input's shape (network.cpp).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <utility>

namespace mnv2_fused {
namespace cpu {

class ForwardArena {
 public:
  float* data() const { return block_.defined() ? block_.data_ptr<float>() : nullptr; }
  int64_t floats() const { return block_.defined() ? block_.numel() : 0; }
  // The memory and the prepared stages' weight copies (kept_bytes).
  int64_t bytes() const { return floats() * static_cast<int64_t>(sizeof(float)) + kept_bytes_; }

  // A forward starts: nothing needed yet.
  void begin() { need_ = 0; }

  // What the forward running in it needs at least (the largest stage so far).
  void need(int64_t floats) { need_ = floats > need_ ? floats : need_; }

  // After a forward: reallocated to what it needed when that is more than it holds or less than
  // half (a smaller batch for good), so it never holds more than twice the last forward's peak; in
  // huge pages where use_huge_pages says so (huge_pages.h), all of whose floats it then holds
  // (arena_floats_for: the forward gives its stages the rest as scratch, network.cpp).
  void fit();

  // Frees the memory, and the prepared stages.
  void release() {
    block_.reset();
    keep(nullptr, 0);
  }

  // What the network's forward made ready for its input's shape (network.cpp: its stages' kernel
  // calls, weights laid out, plans), kept from one forward to the next with the memory, and the
  // bytes of weight copies it holds.
  const std::shared_ptr<void>& prepared() const { return prepared_; }
  void keep(std::shared_ptr<void> prepared, int64_t bytes) {
    prepared_ = std::move(prepared);
    kept_bytes_ = bytes;
  }

 private:
  at::Tensor block_;
  int64_t need_ = 0;
  std::shared_ptr<void> prepared_;
  int64_t kept_bytes_ = 0;
};

// Opens an arena on the calling thread for its lifetime: the network forward run on this thread
// meanwhile uses it (nullptr: none). Scopes nest.
class ArenaScope {
 public:
  explicit ArenaScope(ForwardArena* arena);
  ~ArenaScope();
  ArenaScope(const ArenaScope&) = delete;
  ArenaScope& operator=(const ArenaScope&) = delete;

 private:
  ForwardArena* outer_;
};

// The arena open on this thread, or nullptr.
ForwardArena* open_arena();

}  // namespace cpu
}  // namespace mnv2_fused
