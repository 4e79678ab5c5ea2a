#pragma once
// Hot-item detection: which item ids take most of the traffic right now.
//
// A ring of count-min sketches, one per sub-window, covers the sliding window; an item's count is
// the sum over live sub-windows of its count-min estimate (never below the true count, above it by
// at most e * N / width with probability 1 - e^-depth). Workers record concurrently with relaxed
// atomic increments; the ring rotates lazily on the first record of a new sub-window (no timer).
// Items whose current-sub-window count passes a small floor become candidates in a top-K list; an
// item is hot while its estimated rate over the window is at or above the threshold. The hot set
// is a tiny array of atomics, so isHot() on the data path takes no lock.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.h"

namespace sluice::limiter {

struct HeavyHitterParams {
  Nanos window = 10 * kSeconds;
  uint32_t subWindows = 5;   // ring size; the window slides in steps of window / subWindows
  uint32_t depth = 4;        // rows (independent hashes)
  uint32_t width = 4096;     // counters per row, rounded up to a power of two
  uint32_t topK = 32;        // candidates tracked (and the most items ever hot at once)
  double hotRate = 100.0;    // requests per second at which an item is hot
  // An item becomes a candidate once its count in the current sub-window reaches this fraction of
  // what a hot item would have there: keeps the top-K lock off the path of cold items.
  double candidateFraction = 0.25;

  const char* validate() const;
};

struct HotItem {
  std::string item;   // the id as recorded (truncated to 64 bytes)
  uint64_t hash = 0;
  double rate = 0;    // estimated requests per second over the window
  uint64_t count = 0; // estimated requests in the window
  bool hot = false;
};

class HeavyHitterSketch {
 public:
  explicit HeavyHitterSketch(const HeavyHitterParams& params);

  // Counts `count` requests for `item` (hash64 of it in `itemHash`) at `now`. Returns whether the
  // item is hot after this record. Safe from any number of threads.
  bool record(std::string_view item, uint64_t itemHash, Nanos now, uint32_t count = 1);
  bool record(std::string_view item, Nanos now, uint32_t count = 1);

  // Lock-free check against the current hot set.
  bool isHot(uint64_t itemHash) const;
  // Estimated requests for the item over the window ending at `now`, and the matching rate.
  uint64_t estimateCount(uint64_t itemHash, Nanos now) const;
  double estimateRate(uint64_t itemHash, Nanos now) const;

  // The hot items, hottest first (admin API).
  std::vector<HotItem> hotList(Nanos now) const;
  // Every tracked candidate, hot or not, highest rate first.
  std::vector<HotItem> topK(Nanos now) const;

  size_t memoryBytes() const;
  const HeavyHitterParams& params() const { return params_; }

 private:
  struct SubWindow {
    std::atomic<int64_t> epoch{INT64_MIN};
    std::unique_ptr<std::atomic<uint32_t>[]> counters;  // depth * width
  };
  struct Candidate {
    uint64_t hash = 0;
    uint64_t count = 0;
    std::string item;
    bool hot = false;
  };

  size_t column(uint64_t hash, uint32_t row) const;
  int64_t epochOf(Nanos now) const;
  size_t slotOf(int64_t epoch) const;
  void rotate(int64_t epoch, Nanos now);
  double spanSeconds(Nanos now) const;
  void offerCandidate(std::string_view item, uint64_t hash, Nanos now);
  // Re-estimates every candidate, drops the ones gone cold, republishes the hot set. Holds topMutex_.
  void refreshLocked(Nanos now);
  void publishHotLocked();
  std::vector<HotItem> snapshot(Nanos now, bool hotOnly) const;

  const HeavyHitterParams params_;
  const Nanos subLength_;
  const uint32_t widthMask_;
  const uint64_t candidateFloor_;
  std::unique_ptr<SubWindow[]> ring_;
  std::atomic<Nanos> firstRecord_{INT64_MIN};

  std::mutex rotateMutex_;
  mutable std::mutex topMutex_;
  std::vector<Candidate> candidates_;  // guarded by topMutex_
  std::unique_ptr<std::atomic<uint64_t>[]> hotSet_;  // topK slots, 0 = empty
};

}  // namespace sluice::limiter
