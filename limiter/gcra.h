#pragma once
// Leaky bucket with nginx limit_req semantics (rate, burst, nodelay, delay=N), computed as GCRA.
//
// nginx keeps per key `excess` (in 1/1000 requests) and `last` (ms) and on each request computes
//   excess' = max(0, excess - rate * elapsed_ms / 1000 + 1000)
// rejecting when excess' > burst * 1000 and delaying by (excess' - delay * 1000) / rate when
// excess' > delay * 1000 (nodelay = delay of infinity). Writing B = excess + 1000 (the backlog
// including the request itself) that is exactly the Generic Cell Rate Algorithm: with emission
// interval T = 1/rate and theoretical arrival time TAT = last + B * T,
//   TAT' = max(TAT, now) + T,   reject when TAT' - now > (burst + 1) * T,
//   delay = TAT' - now - (delay + 1) * T when positive.
// So the default resolution stores one int64 TAT in nanoseconds per key: exact at any rate, no
// ms truncation. GcraResolution::kNginxMillis reproduces nginx's integer arithmetic bit for bit
// (ms clock, excess in 1/1000 units, truncating divisions, `last` kept when 0 ms elapsed) for
// differential tests against a real nginx and for operators who want nginx's exact numbers.
#include <cstdint>
#include <memory>

#include "core/clock.h"
#include "limiter/decision.h"
#include "limiter/key_table.h"
#include "limiter/rate_limiter.h"

namespace sluice::limiter {

enum class GcraResolution : uint8_t {
  kNanos,        // default: TAT in ns, exact sub-millisecond arithmetic
  kNginxMillis,  // nginx limit_req compatibility: ms clock, 1/1000-request integer excess
};

struct GcraParams {
  // The rate is `requests` per `period`: 10r/s = {10, kSeconds}, 30r/m = {30, 60 * kSeconds}.
  uint64_t requests = 1;
  Nanos period = kSeconds;
  // Excess requests tolerated on top of the steady rate (nginx burst=).
  uint32_t burst = 0;
  // nginx delay=N: the first N excess requests pass at once, later ones are delayed. 0 (nginx's
  // default) delays every excess request. Ignored when nodelay is set.
  uint32_t delay = 0;
  bool nodelay = false;
  GcraResolution resolution = GcraResolution::kNanos;
  // Rejected requests still add to the key's debt (penalise floods), capped so a key stopping
  // now passes again at most `penaltyCap` later than it would without the penalty.
  bool countRejected = false;
  Nanos penaltyCap = 60 * kSeconds;

  static GcraParams perSecond(uint64_t requests, uint32_t burst = 0) {
    GcraParams p;
    p.requests = requests;
    p.burst = burst;
    return p;
  }
  static GcraParams perMinute(uint64_t requests, uint32_t burst = 0) {
    GcraParams p = perSecond(requests, burst);
    p.period = 60 * kSeconds;
    return p;
  }

  // nullptr when usable, else what is wrong (the config loader adds file:line:col).
  const char* validate() const;
};

// The algorithm on one key's 64-bit state; no table, no locking. Pure and cheap to copy.
class Gcra {
 public:
  explicit Gcra(const GcraParams& params);

  // Decides on `cost` requests at `now` for a key in `state` (`fresh`: never seen, state ignored)
  // and updates `state` only when the decision charges (decision.charged).
  RateDecision charge(uint64_t& state, bool fresh, Nanos now, uint32_t cost) const;
  // Same decision, state untouched.
  RateDecision peek(uint64_t state, bool fresh, Nanos now, uint32_t cost) const;
  // True when the state is equivalent to a never-seen key at `now`, so dropping it is lossless.
  bool idle(uint64_t state, Nanos now) const;
  // What the key still owes at `now`, 0 when idle: ns of TAT ahead of now, or nginx milli-excess
  // (plus the next request's 1000) left after the drain. Ranks entries for eviction.
  uint64_t debt(uint64_t state, Nanos now) const;
  // Takes `cost` requests back out of the state (the inexact half of refund()).
  void uncharge(uint64_t& state, uint32_t cost) const;

  const GcraParams& params() const { return params_; }
  Nanos emissionInterval() const { return interval_; }

  // nginx mode packs the state as last_ms (40 bits, ~34 years of monotonic clock) | excess (24).
  static constexpr int kExcessBits = 24;
  static constexpr uint64_t kExcessMask = (uint64_t{1} << kExcessBits) - 1;
  static constexpr uint64_t kMillisMask = (uint64_t{1} << 40) - 1;
  // A stamp up to this far ahead of `now` (49 days) is another worker's clock reading, not a wrap.
  static constexpr uint64_t kBehindMs = uint64_t{1} << 32;

 private:
  friend class GcraLimiter;  // take() inlines charge(): chargeInline
  // Both defined (inline) in gcra.cc, their only user.
  inline RateDecision chargeInline(uint64_t& state, bool fresh, Nanos now, uint32_t cost) const;
  inline RateDecision chargeNanos(uint64_t& state, bool fresh, Nanos now, uint32_t cost) const;
  RateDecision chargeNginx(uint64_t& state, bool fresh, Nanos now, uint32_t cost) const;
  int64_t nginxElapsedMs(uint64_t state, int64_t nowMs) const;
  int64_t nginxDrain(int64_t elapsedMs) const;
  // floor(x / T) for 0 <= x, exact, by reciprocal multiply and a one-step correction.
  int64_t intervalsIn(Nanos x) const;

  GcraParams params_;
  // ns resolution
  Nanos interval_ = 0;   // T: one request's worth of time
  Nanos tolerance_ = 0;  // (burst + 1) * T: how far TAT may run ahead of now
  Nanos delayFree_ = 0;  // (delay + 1) * T: backlog served without delay
  Nanos penaltyLimit_ = 0;
  double inverseInterval_ = 0;  // 1 / T: `remaining` without a 64-bit divide on every check
  // nginx resolution, in nginx's units (rate: 1/1000 requests per second)
  int64_t rateMilli_ = 0;
  int64_t burstMilli_ = 0;
  int64_t delayMilli_ = 0;
  int64_t maxExcess_ = 0;
};

// The per-rule key table and its format. Shared between generations: a reload that keeps the rule
// id and key definition hands the same table to the new limiter, so state survives.
struct GcraTable {
  GcraTable(size_t memoryBytes, GcraResolution resolution)
      : resolution(resolution), entries(memoryBytes) {}
  const GcraResolution resolution;  // the state format; a change needs a new table
  KeyTable<uint64_t, 128> entries;  // 16-byte entries, 7 per 128-byte set
};
using GcraTablePtr = std::shared_ptr<GcraTable>;

// A keyed leaky-bucket rule: Gcra over a byte-bounded, process-wide KeyTable.
class GcraLimiter final : public RateLimiter {
 public:
  // `params` must validate(); `table` must have params.resolution (see reuseOrCreateTable).
  GcraLimiter(const GcraParams& params, GcraTablePtr table);

  // `previous` when it can carry this rule's state (same resolution and memory), else a new table.
  static GcraTablePtr reuseOrCreateTable(const GcraTablePtr& previous, const GcraParams& params,
                                         size_t memoryBytes);

  RateDecision take(uint64_t key, Nanos now, uint32_t cost, ChargeReceipt* receipt) override;
  void refund(const ChargeReceipt& receipt, Nanos now) override;
  RateDecision peek(uint64_t key, Nanos now, uint32_t cost) const override;
  void prefetch(uint64_t key) const override { table_->entries.prefetch(key); }
  bool countsRejected() const override { return gcra_.params().countRejected; }

  // Keys whose bucket is not back to full (the "live keys" metric). Scans the table.
  size_t activeKeys(Nanos now) const;
  const Gcra& algorithm() const { return gcra_; }
  const GcraTablePtr& table() const { return table_; }

 private:
  // Ranked by debt, so a full set gives up a nearly drained bucket before an abuser's.
  EntryWorth classify(uint64_t state, Nanos now) const { return gcra_.debt(state, now); }

  const Gcra gcra_;
  const GcraTablePtr table_;
};

}  // namespace sluice::limiter
