#include "limiter/adaptive_concurrency.h"

#include <algorithm>
#include <cmath>

namespace sluice::limiter {

const char* GradientParams::validate() const {
  if (floor < 1) return "floor must be at least 1";
  if (ceiling < floor) return "ceiling below floor";
  if (initialLimit < floor || initialLimit > ceiling) return "initial limit outside [floor, ceiling]";
  if (sampleWindow <= 0) return "sample window must be positive";
  if (!(percentile > 0 && percentile <= 1)) return "percentile must be in (0, 1]";
  if (!(minRttBuffer >= 0 && minRttBuffer <= 10)) return "min RTT buffer must be in [0, 10]";
  if (minRttInterval <= 0) return "min RTT interval must be positive";
  if (minRttSamples < 1 || maxSamples < minRttSamples) return "need 1 <= min_rtt_samples <= max_samples";
  return nullptr;
}

GradientConcurrencyLimit::GradientConcurrencyLimit(const GradientParams& params, Nanos now)
    : params_(params), limit_(params.floor) {
  windowStart_ = now;
  limitBeforeMeasuring_ = params.initialLimit;
  samples_.reserve(params.maxSamples);
}

AcquireResult GradientConcurrencyLimit::tryAcquire(uint64_t, Nanos) {
  return acquireBelow(inFlight_, limit_.load(std::memory_order_relaxed), this);
}

void GradientConcurrencyLimit::recordLatency(Nanos latency, Nanos now) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++seenInWindow_;
  if (samples_.size() < params_.maxSamples) {
    samples_.push_back(latency);
  } else {
    // Reservoir sampling keeps the percentile unbiased however busy the window is.
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    const uint64_t j = rng_ % seenInWindow_;
    if (j < samples_.size()) samples_[j] = latency;
  }
  maybeCloseWindowLocked(now);
}

void GradientConcurrencyLimit::tick(Nanos now) {
  std::lock_guard<std::mutex> lock(mutex_);
  maybeCloseWindowLocked(now);
}

Nanos GradientConcurrencyLimit::percentileLocked() {
  const size_t n = samples_.size();
  size_t k = static_cast<size_t>(std::ceil(params_.percentile * static_cast<double>(n)));
  k = std::clamp<size_t>(k, 1, n) - 1;
  std::nth_element(samples_.begin(), samples_.begin() + static_cast<ptrdiff_t>(k), samples_.end());
  return samples_[k];
}

void GradientConcurrencyLimit::maybeCloseWindowLocked(Nanos now) {
  if (now - windowStart_ < params_.sampleWindow) return;
  if (measuring_) {
    // Keep the floor until enough uncongested samples are in.
    if (samples_.size() < params_.minRttSamples) return;
    minRtt_ = std::max<Nanos>(1, percentileLocked());
    measuring_ = false;
    nextMinRttAt_ = now + params_.minRttInterval;
    limit_.store(std::clamp(limitBeforeMeasuring_, params_.floor, params_.ceiling),
                 std::memory_order_relaxed);
  } else if (!samples_.empty()) {
    sampleRtt_ = std::max<Nanos>(1, percentileLocked());
    const double healthy = static_cast<double>(minRtt_) * (1.0 + params_.minRttBuffer);
    const double gradient = std::clamp(healthy / static_cast<double>(sampleRtt_), 0.5, 2.0);
    const double base = static_cast<double>(limit_.load(std::memory_order_relaxed)) * gradient;
    // sqrt(limit) of headroom keeps probing upwards when latency is flat.
    const double next = std::clamp(base + std::sqrt(base), static_cast<double>(params_.floor),
                                   static_cast<double>(params_.ceiling));
    limit_.store(static_cast<uint32_t>(next), std::memory_order_relaxed);
    if (now >= nextMinRttAt_) {
      measuring_ = true;
      limitBeforeMeasuring_ = limit_.load(std::memory_order_relaxed);
      limit_.store(params_.floor, std::memory_order_relaxed);
    }
  }
  samples_.clear();
  seenInWindow_ = 0;
  windowStart_ = now;
}

Nanos GradientConcurrencyLimit::minRtt() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return minRtt_;
}

Nanos GradientConcurrencyLimit::lastSampleRtt() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return sampleRtt_;
}

bool GradientConcurrencyLimit::measuringMinRtt() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return measuring_;
}

}  // namespace sluice::limiter
