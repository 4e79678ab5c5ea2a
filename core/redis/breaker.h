#pragma once
// Per-node circuit breaker of the Redis client: `failureThreshold` consecutive transport failures
// (connect failures, timeouts, connections lost) open it for `cooldown`; calls while open fail
// fast; after the cooldown one probe call is let through (half-open) and its outcome closes the
// breaker or reopens it for another cooldown.
//
// Why not limiter/CircuitBreaker: core/ must not depend on limiter/ (limiter -> core), and that
// breaker is a Sentinel-style ratio-over-a-sliding-window breaker shared across threads (mutex,
// atomics). A Redis node's health is better read as consecutive failures (one dead connection
// fails everything at once), and each client lives on one loop, so this one is a few plain fields.
#include <cstdint>

#include "core/clock.h"

namespace sluice::redis {

enum class RedisBreakerState : uint8_t { kClosed, kOpen, kHalfOpen };

const char* redisBreakerStateName(RedisBreakerState s);

class RedisBreaker {
 public:
  RedisBreaker(uint32_t failureThreshold, Nanos cooldown)
      : threshold_(failureThreshold == 0 ? 1 : failureThreshold), cooldown_(cooldown) {}

  // May a call go to the node now? In half-open, true once (the probe) until its outcome is known.
  bool allow(Nanos now);
  void onSuccess();
  // Returns true when this failure opened (or reopened) the breaker.
  bool onFailure(Nanos now);

  RedisBreakerState state(Nanos now) const;
  uint64_t trips() const { return trips_; }
  uint32_t consecutiveFailures() const { return failures_; }

 private:
  void open(Nanos now);

  const uint32_t threshold_;
  const Nanos cooldown_;
  RedisBreakerState state_ = RedisBreakerState::kClosed;
  uint32_t failures_ = 0;
  Nanos openUntil_ = 0;
  bool probeOut_ = false;
  uint64_t trips_ = 0;
};

}  // namespace sluice::redis
