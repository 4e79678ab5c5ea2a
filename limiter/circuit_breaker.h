#pragma once
// Circuit breaker per route or upstream pool, with Sentinel's degrade-rule semantics.
//
// Closed: calls pass and their outcomes fill a bucketed sliding window. When the window holds at
// least minRequests calls and the ratio of bad calls (errors, or calls slower than
// slowCallThreshold) exceeds the threshold (or reaches it, for a threshold of 1.0), the breaker
// opens. Open: every call is refused for `cooldown` (the rule's action answers: degrade, reject).
// Half-open: up to halfOpenProbes probe calls pass; a bad probe reopens it for another cooldown,
// halfOpenProbes good ones close it with a fresh window.
//
// A call's outcome is reported through the BreakerPermit it was admitted with; a permit destroyed
// without an outcome (client abort) frees its probe place without counting, so a half-open breaker
// can never be wedged by a probe that never finished.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "core/clock.h"

namespace sluice::limiter {

enum class BreakerStrategy : uint8_t {
  kErrorRatio,     // bad = the call failed
  kSlowCallRatio,  // bad = the call took longer than slowCallThreshold
};

enum class BreakerState : uint8_t { kClosed, kOpen, kHalfOpen };

const char* breakerStateName(BreakerState s);

struct CircuitBreakerParams {
  BreakerStrategy strategy = BreakerStrategy::kErrorRatio;
  double threshold = 0.5;  // bad-call ratio in (0, 1]
  Nanos slowCallThreshold = kSeconds;
  uint32_t minRequests = 10;
  Nanos statWindow = 10 * kSeconds;
  uint32_t buckets = 10;
  Nanos cooldown = 5 * kSeconds;
  uint32_t halfOpenProbes = 1;

  const char* validate() const;
};

class CircuitBreaker;

// Admission for one call. Move-only; report the outcome once.
class BreakerPermit {
 public:
  BreakerPermit() = default;
  ~BreakerPermit();
  BreakerPermit(BreakerPermit&& other) noexcept;
  BreakerPermit& operator=(BreakerPermit&& other) noexcept;
  BreakerPermit(const BreakerPermit&) = delete;
  BreakerPermit& operator=(const BreakerPermit&) = delete;

  bool admitted() const { return admitted_; }
  bool probe() const { return probe_; }
  void succeed(Nanos latency, Nanos now) { finish(false, latency, now); }
  void fail(Nanos latency, Nanos now) { finish(true, latency, now); }

 private:
  friend class CircuitBreaker;
  BreakerPermit(CircuitBreaker* breaker, bool probe) : breaker_(breaker), admitted_(true), probe_(probe) {}
  void finish(bool failed, Nanos latency, Nanos now);

  CircuitBreaker* breaker_ = nullptr;  // non-null while an outcome is owed
  bool admitted_ = false;
  bool probe_ = false;
};

class CircuitBreaker {
 public:
  explicit CircuitBreaker(const CircuitBreakerParams& params);

  // A refused permit (admitted() false) means: answer with the rule's degrade action.
  BreakerPermit tryPass(Nanos now);
  BreakerState state(Nanos now) const;
  uint64_t trips() const { return trips_.load(std::memory_order_relaxed); }
  const CircuitBreakerParams& params() const { return params_; }

 private:
  friend class BreakerPermit;
  struct Bucket {
    int64_t epoch = INT64_MIN;
    uint32_t total = 0;
    uint32_t bad = 0;
  };

  void complete(bool probe, bool failed, Nanos latency, Nanos now);
  void abandon(bool probe);
  void openLocked(Nanos now);
  void resetWindowLocked();

  const CircuitBreakerParams params_;
  const Nanos bucketLength_;
  // Closed is the common case: checked without the mutex.
  std::atomic<BreakerState> state_{BreakerState::kClosed};
  std::atomic<uint64_t> trips_{0};
  mutable std::mutex mutex_;
  Nanos openUntil_ = 0;
  uint32_t probesInFlight_ = 0;
  uint32_t probeSuccesses_ = 0;
  std::unique_ptr<Bucket[]> window_;
};

}  // namespace sluice::limiter
