#pragma once
// The slots of a per-thread memo (UserAgentCache, HeaderScanMemo): kSets sets of two ways, and
// per set the way to fill next, so a set keeps its two most recently used entries (LRU of two).
// The entries are allocated once, on the heap: the memos are too large for a thread's TLS block.
#include <cstddef>
#include <cstdint>
#include <memory>

namespace sluice::risk {

inline constexpr size_t kMemoWays = 2;

template <class Entry, size_t kSets>
class TwoWaySets {
  static_assert(kSets > 0 && (kSets & (kSets - 1)) == 0, "a power of two: sets are picked by masking");

 public:
  static constexpr size_t kWays = kMemoWays;

  TwoWaySets() : entries_(new Entry[kSets * kWays]) {}

  Entry* ways(size_t set) { return &entries_[set * kWays]; }
  // Way `way` of `set` was just used (a hit or a fill): the other one goes next.
  void used(size_t set, size_t way) { victim_[set] = static_cast<uint8_t>(way ^ 1); }
  size_t victim(size_t set) const { return victim_[set]; }

 private:
  std::unique_ptr<Entry[]> entries_;
  uint8_t victim_[kSets] = {};
};

// This thread's memo, allocated on first use, so threads that never score pay nothing. Memos are
// not thread-safe: one per thread.
template <class Memo>
Memo& perThreadMemo() {
  thread_local std::unique_ptr<Memo> memo;
  if (!memo) memo = std::make_unique<Memo>();
  return *memo;
}

}  // namespace sluice::risk
