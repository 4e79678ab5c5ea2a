#include "limiter/circuit_breaker.h"

#include <catch2/catch.hpp>

#include "core/clock.h"

namespace sluice::limiter {
namespace {

constexpr Nanos kMs = kMillis;

CircuitBreakerParams errorRatio() {
  CircuitBreakerParams p;
  p.strategy = BreakerStrategy::kErrorRatio;
  p.threshold = 0.5;
  p.minRequests = 10;
  p.statWindow = 10 * kSeconds;
  p.buckets = 10;
  p.cooldown = 5 * kSeconds;
  p.halfOpenProbes = 1;
  REQUIRE(p.validate() == nullptr);
  return p;
}

void call(CircuitBreaker& b, Nanos now, bool fail, Nanos latency = kMs) {
  BreakerPermit permit = b.tryPass(now);
  REQUIRE(permit.admitted());
  if (fail) {
    permit.fail(latency, now);
  } else {
    permit.succeed(latency, now);
  }
}

TEST_CASE("breaker: opens on the error ratio once min requests are in", "[limiter][breaker]") {
  CircuitBreaker b(errorRatio());
  for (int i = 0; i < 9; ++i) call(b, i * kMs, true);
  CHECK(b.state(10 * kMs) == BreakerState::kClosed);  // 9 < min requests
  call(b, 10 * kMs, true);
  CHECK(b.state(20 * kMs) == BreakerState::kOpen);
  CHECK(b.trips() == 1);
  CHECK_FALSE(b.tryPass(20 * kMs).admitted());
}

TEST_CASE("breaker: exactly the threshold does not trip, above it does", "[limiter][breaker]") {
  CircuitBreaker b(errorRatio());
  for (int i = 0; i < 5; ++i) call(b, 0, true);
  for (int i = 0; i < 5; ++i) call(b, 0, false);
  CHECK(b.state(0) == BreakerState::kClosed);  // 5/10 = 0.5, not above
  call(b, 0, true);                            // 6/11
  CHECK(b.state(0) == BreakerState::kOpen);
}

TEST_CASE("breaker: half-open probe decides", "[limiter][breaker]") {
  CircuitBreaker b(errorRatio());
  for (int i = 0; i < 10; ++i) call(b, 0, true);
  REQUIRE(b.state(0) == BreakerState::kOpen);
  CHECK_FALSE(b.tryPass(5 * kSeconds - 1).admitted());
  BreakerPermit probe = b.tryPass(5 * kSeconds);
  CHECK(probe.admitted());
  CHECK(probe.probe());
  CHECK_FALSE(b.tryPass(5 * kSeconds).admitted());  // one probe at a time
  probe.fail(kMs, 5 * kSeconds + kMs);
  CHECK(b.state(6 * kSeconds) == BreakerState::kOpen);  // another full cooldown
  CHECK_FALSE(b.tryPass(10 * kSeconds).admitted());
  BreakerPermit second = b.tryPass(10 * kSeconds + kMs);
  REQUIRE(second.admitted());
  second.succeed(kMs, 10 * kSeconds + 2 * kMs);
  CHECK(b.state(10 * kSeconds + 2 * kMs) == BreakerState::kClosed);
  // Closed with a fresh window: the old failures are gone.
  call(b, 10 * kSeconds + 3 * kMs, true);
  CHECK(b.state(10 * kSeconds + 4 * kMs) == BreakerState::kClosed);
}

TEST_CASE("breaker: an abandoned probe frees its place", "[limiter][breaker]") {
  CircuitBreaker b(errorRatio());
  for (int i = 0; i < 10; ++i) call(b, 0, true);
  {
    BreakerPermit probe = b.tryPass(5 * kSeconds);
    REQUIRE(probe.admitted());
  }  // client aborted: no outcome
  CHECK(b.state(5 * kSeconds) == BreakerState::kHalfOpen);
  BreakerPermit next = b.tryPass(5 * kSeconds + kMs);
  CHECK(next.admitted());
  CHECK(next.probe());
}

TEST_CASE("breaker: slow-call ratio", "[limiter][breaker]") {
  CircuitBreakerParams p = errorRatio();
  p.strategy = BreakerStrategy::kSlowCallRatio;
  p.slowCallThreshold = 200 * kMs;
  p.threshold = 0.8;
  CircuitBreaker b(p);
  for (int i = 0; i < 8; ++i) call(b, 0, false, 500 * kMs);
  for (int i = 0; i < 2; ++i) call(b, 0, true, 10 * kMs);  // fast errors are fine here
  CHECK(b.state(0) == BreakerState::kClosed);              // 8/10 = 0.8, not above
  call(b, 0, false, 201 * kMs);
  CHECK(b.state(0) == BreakerState::kOpen);
  // A slow probe counts as bad.
  BreakerPermit probe = b.tryPass(5 * kSeconds);
  REQUIRE(probe.admitted());
  probe.succeed(300 * kMs, 5 * kSeconds + 300 * kMs);
  CHECK(b.state(5 * kSeconds + 300 * kMs) == BreakerState::kOpen);
}

TEST_CASE("breaker: old failures slide out of the window", "[limiter][breaker]") {
  CircuitBreaker b(errorRatio());
  for (int i = 0; i < 9; ++i) call(b, 0, true);
  for (int i = 0; i < 10; ++i) call(b, 11 * kSeconds, false);
  call(b, 11 * kSeconds, true);
  CHECK(b.state(11 * kSeconds) == BreakerState::kClosed);  // 1/11
}

TEST_CASE("breaker: threshold 1.0 trips at 100%", "[limiter][breaker]") {
  CircuitBreakerParams p = errorRatio();
  p.threshold = 1.0;
  CircuitBreaker b(p);
  for (int i = 0; i < 10; ++i) call(b, 0, true);
  CHECK(b.state(0) == BreakerState::kOpen);
}

TEST_CASE("breaker: several probes needed to close", "[limiter][breaker]") {
  CircuitBreakerParams p = errorRatio();
  p.halfOpenProbes = 3;
  CircuitBreaker b(p);
  for (int i = 0; i < 10; ++i) call(b, 0, true);
  BreakerPermit a = b.tryPass(5 * kSeconds);
  BreakerPermit c = b.tryPass(5 * kSeconds);
  BreakerPermit d = b.tryPass(5 * kSeconds);
  CHECK((a.admitted() && c.admitted() && d.admitted()));
  CHECK_FALSE(b.tryPass(5 * kSeconds).admitted());
  a.succeed(kMs, 5 * kSeconds);
  c.succeed(kMs, 5 * kSeconds);
  CHECK(b.state(5 * kSeconds) == BreakerState::kHalfOpen);
  d.succeed(kMs, 5 * kSeconds);
  CHECK(b.state(5 * kSeconds) == BreakerState::kClosed);
}

}  // namespace
}  // namespace sluice::limiter
