#pragma once
// Sliding-window counter for quotas per minute / hour / day (Cloudflare's and Envoy's two-bucket
// approximation). Per key it keeps the count of the current fixed window and of the previous one;
// the request rate seen over the sliding window ending now is estimated as
//   previous * (window - elapsed) / window + current
// i.e. the previous window's requests are assumed spread evenly and slide out linearly. Unlike a
// fixed window there is no double burst at the boundary: a key that spent its quota at 23:59:59
// still carries nearly all of it at 00:00:01. Comparisons are exact integer arithmetic (128-bit).
#include <cstdint>
#include <memory>

#include "core/clock.h"
#include "limiter/decision.h"
#include "limiter/key_table.h"
#include "limiter/rate_limiter.h"

namespace sluice::limiter {

struct SlidingWindowParams {
  uint64_t limit = 100;        // requests allowed per sliding window
  Nanos window = 60 * kSeconds;
  // Rejected requests still count (a flooding key stays over quota until it slows down).
  bool countRejected = false;

  const char* validate() const;
};

// 12 bytes: window number (mod 2^32: 136 years of 1 s windows) and the two counts.
struct SlidingWindowState {
  uint32_t window = 0;
  uint32_t current = 0;
  uint32_t previous = 0;
};

// The algorithm on one key's state; no table, no locking.
class SlidingWindowCounter {
 public:
  explicit SlidingWindowCounter(const SlidingWindowParams& params) : params_(params) {}

  RateDecision charge(SlidingWindowState& state, bool fresh, Nanos now, uint32_t cost) const;
  RateDecision peek(SlidingWindowState state, bool fresh, Nanos now, uint32_t cost) const;
  // Both counts have slid out: the state says nothing a fresh key would not.
  bool idle(const SlidingWindowState& state, Nanos now) const;
  // Takes `cost` back from whichever window `charged` was counted in.
  void uncharge(SlidingWindowState& state, const SlidingWindowState& charged, uint32_t cost) const;
  // The weighted request count over the window ending at `now`, rounded down.
  uint64_t estimate(SlidingWindowState state, Nanos now) const;

  const SlidingWindowParams& params() const { return params_; }

 private:
  friend class SlidingWindowLimiter;  // take() inlines charge(): chargeInline
  // Defined (inline) in sliding_window.cc, its only user.
  inline RateDecision chargeInline(SlidingWindowState& state, bool fresh, Nanos now,
                                   uint32_t cost) const;
  void roll(SlidingWindowState& state, bool fresh, int64_t windowNumber) const;
  Nanos elapsedIn(const SlidingWindowState& state, Nanos now, int64_t windowNumber) const;

  SlidingWindowParams params_;
};

struct SlidingWindowTable {
  explicit SlidingWindowTable(size_t memoryBytes) : entries(memoryBytes) {}
  KeyTable<SlidingWindowState, 128> entries;  // 20-byte entries, 6 per 128-byte set
};
using SlidingWindowTablePtr = std::shared_ptr<SlidingWindowTable>;

class SlidingWindowLimiter final : public RateLimiter {
 public:
  SlidingWindowLimiter(const SlidingWindowParams& params, SlidingWindowTablePtr table);

  // The state survives a limit change; a window length change needs a new table (counts were
  // taken over different windows).
  static SlidingWindowTablePtr reuseOrCreateTable(const SlidingWindowTablePtr& previous,
                                                  Nanos previousWindow,
                                                  const SlidingWindowParams& params,
                                                  size_t memoryBytes);

  RateDecision take(uint64_t key, Nanos now, uint32_t cost, ChargeReceipt* receipt) override;
  void refund(const ChargeReceipt& receipt, Nanos now) override;
  RateDecision peek(uint64_t key, Nanos now, uint32_t cost) const override;
  void prefetch(uint64_t key) const override { table_->entries.prefetch(key); }
  bool countsRejected() const override { return counter_.params().countRejected; }

  size_t activeKeys(Nanos now) const;
  const SlidingWindowCounter& algorithm() const { return counter_; }
  const SlidingWindowTablePtr& table() const { return table_; }

 private:
  const SlidingWindowCounter counter_;
  const SlidingWindowTablePtr table_;
};

}  // namespace sluice::limiter
