#pragma once
// Lease-mode accounting of one cluster-scope limit rule on one worker (docs/cluster.md).
//
// The global budget (`limit` units per fixed window, windows from Redis TIME) lives in Redis
// (lease_take). Each worker holds, per key, a lease: units it took from the budget and spends
// locally with no Redis call. A background sync (every sync_interval, pipelined in one batch)
// takes the next chunk before the lease runs dry (chunk ~ 2 x the key's demand over the last
// sync, capped so one worker cannot hoard the budget). When Redis grants less than asked, the
// budget is gone: the key is refused locally until its window ends, without calling Redis.
// A key whose lease ran dry may borrow up to one chunk of credit while its take is in flight
// (asked for at once, not at the next tick); the credit is repaid from the grant, and what the
// grant cannot repay is carried to the next window's first take: within one window the
// overshoot is at most workers x chunk, over several windows the budget holds.
//
// Redis away (a take failed, or the breaker is open): down() turns true and the caller decides
// with the rule's fallback instead -- fail_open: the local share limiter (limit /
// expected_instances, process-wide), fail_closed: refuse. The first successful take ends that;
// leases restart from zero, and what was spent on the fallback is not reported (no burst of
// catch-up traffic).
//
// No libuv, no Redis: the worker drives it (collect -> send -> applyGrant/applyFailure), so the
// tests drive it with a hand-moved clock.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/clock.h"
#include "limiter/rate_limiter.h"

namespace sluice::cluster {

struct LeaseParams {
  int64_t limit = 0;                   // units per window, cluster-wide
  Nanos window = kSeconds;
  Nanos sync_interval = 50 * kMillis;
  int64_t max_chunk = 1;               // most units one take asks for
  bool fail_closed = false;
};

// One take to send: KEYS[1] = the key's Redis key, ARGV = window_ms, limit, want.
struct LeaseTake {
  uint64_t key = 0;
  int64_t want = 0;
};

struct LeaseStats {
  uint64_t takes = 0;         // lease_take calls sent
  uint64_t granted = 0;       // units granted
  uint64_t exhausted = 0;     // grants that found the budget gone
  uint64_t credit = 0;        // requests allowed on credit (lease dry, take in flight)
  uint64_t fallback = 0;      // requests decided by the fallback while Redis was away
  uint64_t failures = 0;      // takes that failed (transport)
};

class LeaseAccount final : public limiter::RateLimiter {
 public:
  explicit LeaseAccount(LeaseParams p) : p_(p) {}

  limiter::RateDecision take(uint64_t key, Nanos now, uint32_t cost, limiter::ChargeReceipt* receipt) override;
  void refund(const limiter::ChargeReceipt& receipt, Nanos now) override;
  limiter::RateDecision peek(uint64_t key, Nanos now, uint32_t cost) const override;
  bool countsRejected() const override { return false; }

  // Keys that need a take now (urgent: a dry lease) or at the sync tick (below the low mark).
  // Marks them in flight. `tick` false collects urgent ones only.
  void collect(Nanos now, bool tick, std::vector<LeaseTake>* out);
  bool hasUrgent() const { return !urgent_keys_.empty(); }
  // A reply of lease_take: {granted, window_end_ms, used, now_ms} (Redis clock).
  // `used` (the window's units granted so far, all instances; -1 unknown) at the limit means
  // the budget is gone even though this grant was whole: the key then gets no credit once its
  // lease is spent (credit in flight is the overshoot, so none is handed out when none can be
  // repaid).
  void applyGrant(const LeaseTake& t, int64_t granted, int64_t window_end_ms, int64_t redis_now_ms, Nanos now,
                  int64_t used = -1);
  // The take failed (timeout, breaker, connection): the rule goes to its fallback.
  void applyFailure(const LeaseTake& t);
  // Redis is away (a failure, or the client's breaker is open) / back (a reply arrived).
  void setDown(bool down);
  bool down() const { return down_; }
  // Forget keys whose window ended long ago (bounded memory); returns how many remain.
  size_t sweep(Nanos now);
  size_t size() const { return entries_.size(); }
  const LeaseStats& stats() const { return stats_; }
  const LeaseParams& params() const { return p_; }
  void setParams(const LeaseParams& p) { p_ = p; }

 private:
  struct Entry {
    Nanos window_end = 0;    // local monotonic end of the lease's window; 0 = none yet
    int64_t lease = 0;       // units held, spendable locally
    int64_t debt = 0;        // units allowed on credit, to repay from the next grant
    int64_t demand = 0;      // units spent since the last take was sent (sizes the next one)
    int64_t last_chunk = 1;  // size of the last take's chunk (low mark = half of it)
    bool exhausted = false;  // the window's budget is gone: refuse until window_end
    bool in_flight = false;
    bool urgent = false;
  };
  void roll(Entry& e, Nanos now);
  int64_t chunkFor(const Entry& e) const;
  void markUrgent(uint64_t key, Entry& e);
  void send(uint64_t key, Entry& e, std::vector<LeaseTake>* out);

  LeaseParams p_;
  std::unordered_map<uint64_t, Entry> entries_;
  std::vector<uint64_t> urgent_keys_;
  bool down_ = false;
  LeaseStats stats_;
};

}  // namespace sluice::cluster
