// How a block's tiles are handed out to its workers: a contiguous share each, so that a worker's
// tiles follow one another and its ring of hidden rows carries over from one to the next.
#pragma once
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "tile_kernel.h"

namespace mnv2_fused {
namespace cpu {

// The first of tiles [0, tiles) in share s of `workers` (share s ends where share s + 1 begins); the
// plan's cost model splits the tiles the same way.
inline int64_t share_begin(int64_t s, int64_t tiles, int64_t workers) { return s * tiles / workers; }

// Tiles [0, tiles) in one contiguous share per worker. A worker takes its own share's tiles from
// the front, one at a time: consecutive tiles, so with RingState it computes halo rows afresh only
// where its share starts (shares follow the tiles' order: whole images at large batches, a band of
// rows or a strip of the image at batch 1). A worker whose share is done takes the back half of the
// largest share left, so a worker slowed down (another process on its core) does less rather than
// everyone waiting for it. Measured on MobileNetV2 against runs of tiles claimed from one counter,
// where every run computed its halo afresh (2 threads, Zen 3): the first six stages' expands
// computed 3-7% more rows than the image has instead of 6-18% (the stem 2.7% instead of 14.5%),
// and in five comparisons in one process a forward ran 1.005-1.033x faster at batch 1 (median
// 1.017x) and 0.995-1.037x at batch 8 (median 1.013x); with a process spinning on one of the
// cores level (1.004x and 0.996x at batch 8).
class TileShares {
 public:
  TileShares(int64_t tiles, int64_t workers) : shares_(static_cast<size_t>(workers)) {
    TORCH_CHECK(tiles < (int64_t(1) << 32), "mnv2_fused: too many tiles in one call: ", tiles);
    for (int64_t s = 0; s < workers; ++s)
      shares_[s].bounds.store(pack(share_begin(s, tiles, workers), share_begin(s + 1, tiles, workers)));
  }

  // Shares of about equal weight, for tiles that weigh unlike (weight(t) > 0): the shares split
  // the tiles' total weight evenly, and each tile goes to the share its middle falls in.
  template <class Weight>
  TileShares(int64_t tiles, int64_t workers, const Weight& weight) : shares_(static_cast<size_t>(workers)) {
    TORCH_CHECK(tiles < (int64_t(1) << 32), "mnv2_fused: too many tiles in one call: ", tiles);
    int64_t total = 0;
    for (int64_t t = 0; t < tiles; ++t) total += weight(t);
    int64_t t = 0, before = 0, begin = 0;
    for (int64_t s = 0; s < workers; ++s) {
      const int64_t end_weight = (s + 1) * total / workers;
      const int64_t first = begin;
      while (t < tiles && (s + 1 == workers || 2 * before + weight(t) <= 2 * end_weight)) before += weight(t++);
      begin = t;
      shares_[s].bounds.store(pack(first, begin));
    }
  }

  // The next tiles [t0, t1) for the worker of rank `rank`: up to `run` from its own share's front
  // when rank < workers, else half of the largest share left; false when every share is done.
  bool claim(int64_t rank, int64_t& t0, int64_t& t1, int64_t run = 1) {
    if (rank >= 0 && rank < static_cast<int64_t>(shares_.size())) {
      std::atomic<uint64_t>& own = shares_[rank].bounds;
      for (uint64_t v = own.load(); front(v) < back(v);) {
        const int64_t take = std::min(run, back(v) - front(v));
        if (own.compare_exchange_weak(v, pack(front(v) + take, back(v)))) {
          t0 = front(v), t1 = t0 + take;
          return true;
        }
      }
    }
    for (;;) {
      Share* largest = nullptr;
      int64_t most = 0;
      for (Share& s : shares_) {
        const uint64_t v = s.bounds.load();
        if (back(v) - front(v) > most) most = back(v) - front(v), largest = &s;
      }
      if (largest == nullptr) return false;
      uint64_t v = largest->bounds.load();
      if (front(v) >= back(v)) continue;
      const int64_t take = ceil_div(back(v) - front(v), 2);
      if (largest->bounds.compare_exchange_weak(v, pack(front(v), back(v) - take))) {
        t0 = back(v) - take, t1 = back(v);
        return true;
      }
    }
  }

 private:
  // A share's bounds in one word, front << 32 | back, so a claim moves either end in one step; each
  // share on its own cache line.
  struct alignas(64) Share {
    std::atomic<uint64_t> bounds{0};
  };
  static uint64_t pack(int64_t front, int64_t back) { return uint64_t(front) << 32 | uint64_t(back); }
  static int64_t front(uint64_t v) { return static_cast<int64_t>(v >> 32); }
  static int64_t back(uint64_t v) { return static_cast<int64_t>(v & 0xffffffffu); }

  std::vector<Share> shares_;
};

}  // namespace cpu
}  // namespace mnv2_fused
