#include "limiter/circuit_breaker.h"

#include <algorithm>

namespace sluice::limiter {
namespace {

int64_t floorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

}  // namespace

const char* breakerStateName(BreakerState s) {
  switch (s) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half_open";
  }
  return "?";
}

const char* CircuitBreakerParams::validate() const {
  if (!(threshold > 0 && threshold <= 1)) return "threshold must be a ratio in (0, 1]";
  if (strategy == BreakerStrategy::kSlowCallRatio && slowCallThreshold <= 0) {
    return "slow call threshold must be positive";
  }
  if (minRequests < 1) return "min requests must be at least 1";
  if (buckets < 1 || buckets > 1000) return "buckets must be 1..1000";
  if (statWindow < static_cast<Nanos>(buckets) * kMillis) return "stat window too short";
  if (cooldown <= 0) return "cooldown must be positive";
  if (halfOpenProbes < 1) return "half-open probes must be at least 1";
  return nullptr;
}

BreakerPermit::~BreakerPermit() {
  if (breaker_ != nullptr) breaker_->abandon(probe_);
}

BreakerPermit::BreakerPermit(BreakerPermit&& other) noexcept
    : breaker_(other.breaker_), admitted_(other.admitted_), probe_(other.probe_) {
  other.breaker_ = nullptr;
}

BreakerPermit& BreakerPermit::operator=(BreakerPermit&& other) noexcept {
  if (this != &other) {
    if (breaker_ != nullptr) breaker_->abandon(probe_);
    breaker_ = other.breaker_;
    admitted_ = other.admitted_;
    probe_ = other.probe_;
    other.breaker_ = nullptr;
  }
  return *this;
}

void BreakerPermit::finish(bool failed, Nanos latency, Nanos now) {
  if (breaker_ == nullptr) return;  // refused, or already reported
  CircuitBreaker* breaker = breaker_;
  breaker_ = nullptr;
  breaker->complete(probe_, failed, latency, now);
}

CircuitBreaker::CircuitBreaker(const CircuitBreakerParams& params)
    : params_(params),
      bucketLength_(std::max<Nanos>(1, params.statWindow / std::max<uint32_t>(1, params.buckets))),
      window_(new Bucket[std::max<uint32_t>(1, params.buckets)]) {}

BreakerPermit CircuitBreaker::tryPass(Nanos now) {
  if (state_.load(std::memory_order_acquire) == BreakerState::kClosed) {
    return BreakerPermit(this, false);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  BreakerState s = state_.load(std::memory_order_relaxed);
  if (s == BreakerState::kClosed) return BreakerPermit(this, false);
  if (s == BreakerState::kOpen) {
    if (now < openUntil_) return BreakerPermit();
    state_.store(BreakerState::kHalfOpen, std::memory_order_release);
    probesInFlight_ = 0;
    probeSuccesses_ = 0;
  }
  // Half-open: only as many probes in flight as successes still needed.
  if (probesInFlight_ + probeSuccesses_ >= params_.halfOpenProbes) return BreakerPermit();
  ++probesInFlight_;
  return BreakerPermit(this, true);
}

BreakerState CircuitBreaker::state(Nanos now) const {
  const BreakerState s = state_.load(std::memory_order_acquire);
  if (s != BreakerState::kOpen) return s;
  std::lock_guard<std::mutex> lock(mutex_);
  // Open past its cooldown is half-open in effect; the next tryPass makes it so.
  return now >= openUntil_ ? BreakerState::kHalfOpen : BreakerState::kOpen;
}

void CircuitBreaker::complete(bool probe, bool failed, Nanos latency, Nanos now) {
  const bool bad = params_.strategy == BreakerStrategy::kErrorRatio
                       ? failed
                       : latency > params_.slowCallThreshold;
  std::lock_guard<std::mutex> lock(mutex_);
  const BreakerState s = state_.load(std::memory_order_relaxed);
  if (probe) {
    if (probesInFlight_ > 0) --probesInFlight_;
    if (s != BreakerState::kHalfOpen) return;
    if (bad) {
      openLocked(now);
      return;
    }
    if (++probeSuccesses_ >= params_.halfOpenProbes) {
      resetWindowLocked();
      state_.store(BreakerState::kClosed, std::memory_order_release);
    }
    return;
  }
  // Calls admitted before a trip may finish while open: the window restarts on close anyway.
  if (s != BreakerState::kClosed) return;
  const int64_t epoch = floorDiv(now, bucketLength_);
  Bucket& b = window_[static_cast<size_t>(((epoch % params_.buckets) + params_.buckets) % params_.buckets)];
  if (b.epoch != epoch) b = Bucket{epoch, 0, 0};
  ++b.total;
  if (bad) ++b.bad;
  uint64_t total = 0;
  uint64_t badTotal = 0;
  for (uint32_t i = 0; i < params_.buckets; ++i) {
    const Bucket& w = window_[i];
    if (w.epoch > epoch - static_cast<int64_t>(params_.buckets) && w.epoch <= epoch) {
      total += w.total;
      badTotal += w.bad;
    }
  }
  if (total < params_.minRequests) return;
  const double ratio = static_cast<double>(badTotal) / static_cast<double>(total);
  if (ratio > params_.threshold || (params_.threshold >= 1.0 && badTotal == total)) openLocked(now);
}

void CircuitBreaker::abandon(bool probe) {
  if (!probe) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (probesInFlight_ > 0) --probesInFlight_;
}

void CircuitBreaker::openLocked(Nanos now) {
  openUntil_ = now + params_.cooldown;
  probesInFlight_ = 0;
  probeSuccesses_ = 0;
  state_.store(BreakerState::kOpen, std::memory_order_release);
  trips_.fetch_add(1, std::memory_order_relaxed);
}

void CircuitBreaker::resetWindowLocked() {
  for (uint32_t i = 0; i < params_.buckets; ++i) window_[i] = Bucket{};
}

}  // namespace sluice::limiter
