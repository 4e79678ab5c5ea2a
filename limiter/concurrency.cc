#include "limiter/concurrency.h"

namespace sluice::limiter {

AcquireResult acquireBelow(std::atomic<uint32_t>& inFlight, uint32_t limit, SlotOwner* owner) {
  AcquireResult r;
  r.limit = limit;
  uint32_t current = inFlight.load(std::memory_order_relaxed);
  // CAS rather than add-then-undo: the count never overshoots, so readers see an honest figure.
  do {
    if (current >= r.limit) {
      r.status = AcquireStatus::kAtLimit;
      r.inFlight = current;
      return r;
    }
  } while (!inFlight.compare_exchange_weak(current, current + 1, std::memory_order_acquire,
                                           std::memory_order_relaxed));
  r.status = AcquireStatus::kAcquired;
  r.inFlight = current + 1;
  r.slot = ConcurrencySlot(owner, 0);
  return r;
}

AcquireResult ConcurrencyLimiter::tryAcquire(uint64_t, Nanos) {
  return acquireBelow(inFlight_, limit_.load(std::memory_order_relaxed), this);
}

AcquireResult KeyedConcurrencyLimiter::tryAcquire(uint64_t key, Nanos) {
  AcquireResult r;
  r.limit = limit_.load(std::memory_order_relaxed);
  bool acquired = false;
  const TableResult result = table_.apply(
      key, Lookup::kFindOrInsert,
      [](const State& s) { return s.inFlight > 0 ? EntryStatus::kPinned : EntryStatus::kIdle; },
      [&](State& s, bool) {
        if (s.inFlight < r.limit) {
          ++s.inFlight;
          acquired = true;
        }
        r.inFlight = s.inFlight;
        return s.inFlight == 0 ? EntryAction::kErase : EntryAction::kKeep;
      });
  if (result == TableResult::kFull) {
    r.status = AcquireStatus::kTableFull;
    return r;
  }
  if (!acquired) {
    r.status = AcquireStatus::kAtLimit;
    return r;
  }
  r.status = AcquireStatus::kAcquired;
  r.slot = ConcurrencySlot(this, key);
  return r;
}

void KeyedConcurrencyLimiter::releaseSlot(uint64_t key) {
  // Pinned entries are never evicted, so the key is still here.
  table_.apply(
      key, Lookup::kFindOnly,
      [](const State& s) { return s.inFlight > 0 ? EntryStatus::kPinned : EntryStatus::kIdle; },
      [](State& s, bool) {
        if (s.inFlight > 0) --s.inFlight;
        return s.inFlight == 0 ? EntryAction::kErase : EntryAction::kKeep;
      });
}

uint32_t KeyedConcurrencyLimiter::inFlight(uint64_t key) const {
  uint32_t n = 0;
  table_.read(key, [&](const State& s) { n = s.inFlight; });
  return n;
}

}  // namespace sluice::limiter
