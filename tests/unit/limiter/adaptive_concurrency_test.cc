#include "limiter/adaptive_concurrency.h"

#include <catch2/catch.hpp>

#include "core/clock.h"

namespace sluice::limiter {
namespace {

constexpr Nanos kMs = kMillis;

GradientParams params() {
  GradientParams p;
  p.floor = 5;
  p.ceiling = 500;
  p.initialLimit = 50;
  p.sampleWindow = 100 * kMs;
  p.minRttInterval = 30 * kSeconds;
  p.minRttSamples = 20;
  REQUIRE(p.validate() == nullptr);
  return p;
}

// Feeds one window of `n` latencies and closes it.
Nanos window(GradientConcurrencyLimit& g, Nanos now, Nanos latency, int n = 50) {
  for (int i = 0; i < n; ++i) g.recordLatency(latency, now + i * kMs);
  now += 100 * kMs;
  g.recordLatency(latency, now);
  return now;
}

TEST_CASE("adaptive: measures minRTT at the floor first", "[limiter][adaptive]") {
  GradientConcurrencyLimit g(params(), 0);
  CHECK(g.measuringMinRtt());
  CHECK(g.limit() == 5);
  Nanos now = window(g, 0, 10 * kMs);
  CHECK_FALSE(g.measuringMinRtt());
  CHECK(g.minRtt() == 10 * kMs);
  CHECK(g.limit() == 50);
  (void)now;
}

TEST_CASE("adaptive: grows while latency stays near minRTT, up to the ceiling",
          "[limiter][adaptive]") {
  GradientConcurrencyLimit g(params(), 0);
  Nanos now = window(g, 0, 10 * kMs);
  now = window(g, now, 10 * kMs);
  // gradient = 12.5 / 10 -> 1.25: 50 * 1.25 = 62.5, + sqrt(62.5) = 70.4
  CHECK(g.limit() == 70);
  for (int i = 0; i < 40; ++i) now = window(g, now, 10 * kMs);
  CHECK(g.limit() == 500);
}

TEST_CASE("adaptive: shrinks when latency climbs, never below the floor", "[limiter][adaptive]") {
  GradientConcurrencyLimit g(params(), 0);
  Nanos now = window(g, 0, 10 * kMs);
  now = window(g, now, 80 * kMs);
  // gradient = 12.5 / 80 clamps to 0.5: 25 + 5 = 30
  CHECK(g.limit() == 30);
  for (int i = 0; i < 20; ++i) now = window(g, now, 80 * kMs);
  CHECK(g.limit() >= 5);
  CHECK(g.limit() < 10);
}

TEST_CASE("adaptive: in-flight requests are capped by the current limit", "[limiter][adaptive]") {
  GradientConcurrencyLimit g(params(), 0);
  std::vector<ConcurrencySlot> slots;
  for (int i = 0; i < 10; ++i) {
    AcquireResult r = g.tryAcquire(0, 0);
    if (r.acquired()) slots.push_back(std::move(r.slot));
  }
  CHECK(slots.size() == 5);  // the floor while measuring
  CHECK(g.inFlight() == 5);
  slots.clear();
  CHECK(g.inFlight() == 0);
}

TEST_CASE("adaptive: minRTT is re-measured at the floor after its interval", "[limiter][adaptive]") {
  GradientConcurrencyLimit g(params(), 0);
  Nanos now = window(g, 0, 10 * kMs);
  while (now < 31 * kSeconds && !g.measuringMinRtt()) now = window(g, now, 10 * kMs);
  CHECK(g.measuringMinRtt());
  CHECK(g.limit() == 5);
  // The pool got slower for good: the new baseline follows, and the limit is restored.
  now = window(g, now, 20 * kMs);
  CHECK(g.minRtt() == 20 * kMs);
  CHECK(g.limit() == 500);
}

TEST_CASE("adaptive: a quiet window changes nothing", "[limiter][adaptive]") {
  GradientConcurrencyLimit g(params(), 0);
  Nanos now = window(g, 0, 10 * kMs);
  const uint32_t before = g.limit();
  g.tick(now + kSeconds);
  CHECK(g.limit() == before);
}

}  // namespace
}  // namespace sluice::limiter
