#include "core/redis/breaker.h"

namespace sluice::redis {

const char* redisBreakerStateName(RedisBreakerState s) {
  switch (s) {
    case RedisBreakerState::kClosed: return "closed";
    case RedisBreakerState::kOpen: return "open";
    case RedisBreakerState::kHalfOpen: return "half_open";
  }
  return "?";
}

RedisBreakerState RedisBreaker::state(Nanos now) const {
  if (state_ == RedisBreakerState::kOpen && now >= openUntil_) return RedisBreakerState::kHalfOpen;
  return state_;
}

bool RedisBreaker::allow(Nanos now) {
  if (state_ == RedisBreakerState::kClosed) return true;
  if (state_ == RedisBreakerState::kOpen) {
    if (now < openUntil_) return false;
    state_ = RedisBreakerState::kHalfOpen;
    probeOut_ = false;
  }
  if (probeOut_) return false;
  probeOut_ = true;
  return true;
}

void RedisBreaker::onSuccess() {
  // A success that was admitted before the breaker opened says nothing about now: only a
  // success while closed or half-open counts.
  if (state_ == RedisBreakerState::kOpen) return;
  state_ = RedisBreakerState::kClosed;
  failures_ = 0;
  probeOut_ = false;
}

bool RedisBreaker::onFailure(Nanos now) {
  switch (state_) {
    case RedisBreakerState::kClosed:
      if (++failures_ >= threshold_) {
        open(now);
        return true;
      }
      return false;
    case RedisBreakerState::kHalfOpen:
      open(now);
      return true;
    case RedisBreakerState::kOpen:
      return false;
  }
  return false;
}

void RedisBreaker::open(Nanos now) {
  state_ = RedisBreakerState::kOpen;
  openUntil_ = now + cooldown_;
  probeOut_ = false;
  trips_++;
}

}  // namespace sluice::redis
