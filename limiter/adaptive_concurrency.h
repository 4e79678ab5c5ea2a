#pragma once
// Adaptive concurrency limit for an upstream pool, gradient style (Envoy's adaptive_concurrency
// filter, Netflix concurrency-limits). The limit follows the latency the pool shows:
//   gradient = clamp((minRTT * (1 + buffer)) / sampleRTT, 0.5, 2.0)
//   limit'   = clamp(limit * gradient + sqrt(limit * gradient), floor, ceiling)
// once per sample window, where sampleRTT is a percentile of the window's latencies and minRTT the
// latency of the pool when it is not queueing. minRTT is (re)measured like Envoy does: every
// minRttInterval the limit drops to `floor` until minRttSamples latencies are in, so the baseline
// is taken with the pool uncongested and cannot drift up with the load it is meant to detect.
// floor and ceiling make it a backstop, not the main limit. Time is injected; there are no timers.
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "core/clock.h"
#include "limiter/concurrency.h"

namespace sluice::limiter {

struct GradientParams {
  uint32_t floor = 10;
  uint32_t ceiling = 1000;
  uint32_t initialLimit = 100;
  Nanos sampleWindow = 100 * kMillis;
  double percentile = 0.5;        // of a window's latencies, as its sampleRTT
  double minRttBuffer = 0.25;     // latency above minRTT still treated as healthy
  Nanos minRttInterval = 60 * kSeconds;
  uint32_t minRttSamples = 50;
  uint32_t maxSamples = 512;      // per window, reservoir-sampled beyond that

  const char* validate() const;
};

class GradientConcurrencyLimit final : public ConcurrencyGate, public SlotOwner {
 public:
  // Starts by measuring minRTT (limit = floor).
  GradientConcurrencyLimit(const GradientParams& params, Nanos now);

  AcquireResult tryAcquire(uint64_t key, Nanos now) override;
  // One completed request's latency. Aborted requests report nothing (their slot still frees).
  void recordLatency(Nanos latency, Nanos now);
  // Closes a due window with no request completing (optional, e.g. from a 1 s timer).
  void tick(Nanos now);

  uint32_t limit() const { return limit_.load(std::memory_order_relaxed); }
  uint32_t inFlight() const { return inFlight_.load(std::memory_order_relaxed); }
  Nanos minRtt() const;
  Nanos lastSampleRtt() const;
  bool measuringMinRtt() const;

 private:
  void releaseSlot(uint64_t) override { inFlight_.fetch_sub(1, std::memory_order_release); }
  void maybeCloseWindowLocked(Nanos now);
  Nanos percentileLocked();

  const GradientParams params_;
  alignas(64) std::atomic<uint32_t> limit_;
  alignas(64) std::atomic<uint32_t> inFlight_{0};

  mutable std::mutex mutex_;
  bool measuring_ = true;
  Nanos windowStart_ = 0;
  Nanos nextMinRttAt_ = 0;
  Nanos minRtt_ = 0;
  Nanos sampleRtt_ = 0;
  uint32_t limitBeforeMeasuring_ = 0;
  uint64_t seenInWindow_ = 0;
  uint64_t rng_ = 0x9E3779B97F4A7C15ULL;
  std::vector<Nanos> samples_;
};

}  // namespace sluice::limiter
