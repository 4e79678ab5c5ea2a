// PoolGate (proxy/upstream/pool_gate.h): priorities against the saturation thresholds, stale and
// garbage reports, the fixed cap, and hand-over to the next generation's gate.
#include "proxy/upstream/pool_gate.h"

#include <catch2/catch.hpp>

namespace sluice {
namespace {

UpstreamConfig saturated(double capacity = 100) {
  UpstreamConfig u;
  u.name = "app";
  u.saturation.header = "X-Busy-Threads";
  u.saturation.capacity = capacity;
  u.saturation.shed_low = 0.8;
  u.saturation.shed_normal = 0.95;
  u.saturation.hold = 2 * kSeconds;
  return u;
}

using Refusal = PoolGate::Refusal;

TEST_CASE("pool gate: routes are shed by priority as the reported load rises", "[proxy][pool_gate]") {
  PoolGate gate(saturated(), nullptr, 0);
  Nanos now = 10 * kSeconds;
  CHECK(gate.saturation(now) == -1);  // no report: nothing is shed
  CHECK(gate.admit(RoutePriority::kLow, now).refusal == Refusal::kNone);
  struct Step {
    const char* busy;
    Refusal low, normal, high;
  } steps[] = {
      {"79", Refusal::kNone, Refusal::kNone, Refusal::kNone},
      {"80", Refusal::kSaturated, Refusal::kNone, Refusal::kNone},
      {" 95", Refusal::kSaturated, Refusal::kSaturated, Refusal::kNone},
      {"100", Refusal::kSaturated, Refusal::kSaturated, Refusal::kSaturated},
      {"250", Refusal::kSaturated, Refusal::kSaturated, Refusal::kSaturated},
  };
  for (const auto& st : steps) {
    INFO(st.busy);
    gate.reportSaturation(st.busy, now);
    CHECK(gate.admit(RoutePriority::kLow, now).refusal == st.low);
    CHECK(gate.admit(RoutePriority::kNormal, now).refusal == st.normal);
    CHECK(gate.admit(RoutePriority::kHigh, now).refusal == st.high);
    CHECK(gate.admit(RoutePriority::kCritical, now).refusal == Refusal::kNone);
  }
  // A report older than `hold` no longer sheds anything.
  CHECK(gate.admit(RoutePriority::kLow, now + 2 * kSeconds).refusal == Refusal::kSaturated);
  CHECK(gate.admit(RoutePriority::kLow, now + 2 * kSeconds + 1).refusal == Refusal::kNone);
}

TEST_CASE("pool gate: garbage saturation values are not reports", "[proxy][pool_gate]") {
  PoolGate gate(saturated(), nullptr, 0);
  gate.reportSaturation("50", 0);
  for (const char* bad : {"", "busy", "-3", "1e99", "nan"}) {
    INFO(bad);
    gate.reportSaturation(bad, 0);
    CHECK(gate.saturation(0) == Approx(0.5));
  }
}

TEST_CASE("pool gate: max_active caps in-flight requests; slots free themselves", "[proxy][pool_gate]") {
  UpstreamConfig u;
  u.max_active = 2;
  PoolGate gate(u, nullptr, 0);
  auto a = gate.admit(RoutePriority::kNormal, 0);
  auto b = gate.admit(RoutePriority::kNormal, 0);
  CHECK(a.refusal == Refusal::kNone);
  CHECK(b.refusal == Refusal::kNone);
  CHECK(gate.admit(RoutePriority::kCritical, 0).refusal == Refusal::kMaxActive);
  CHECK(gate.inFlight() == 2);
  b = PoolGate::Admission();
  CHECK(gate.inFlight() == 1);
  CHECK(gate.admit(RoutePriority::kNormal, 0).refusal == Refusal::kNone);  // and its slot went back
  CHECK(gate.inFlight() == 1);
}

TEST_CASE("pool gate: a reload keeps in-flight counts and the last reading", "[proxy][pool_gate]") {
  UpstreamConfig u = saturated();
  u.max_active = 2;
  auto old_gate = std::make_unique<PoolGate>(u, nullptr, 0);
  auto held = old_gate->admit(RoutePriority::kNormal, 0);
  old_gate->reportSaturation("85", 0);
  u.max_active = 1;  // lowered by the reload, with one request still in flight
  PoolGate next(u, old_gate.get(), 0);
  CHECK(next.inFlight() == 1);
  CHECK(next.admit(RoutePriority::kHigh, 0).refusal == Refusal::kMaxActive);
  CHECK(next.saturation(0) == Approx(0.85));
  held = PoolGate::Admission();  // the old generation's request ends
  old_gate.reset();
  CHECK(next.admit(RoutePriority::kHigh, 0).refusal == Refusal::kNone);
}

TEST_CASE("pool gate: adaptive concurrency admits up to its limit", "[proxy][pool_gate]") {
  UpstreamConfig u;
  u.adaptive.enabled = true;
  u.adaptive.floor = 3;
  u.adaptive.ceiling = 10;
  PoolGate gate(u, nullptr, 0);
  REQUIRE(gate.adaptive() != nullptr);
  std::vector<PoolGate::Admission> held;
  for (int i = 0; i < 3; i++) held.push_back(gate.admit(RoutePriority::kNormal, 0));
  for (auto& h : held) CHECK(h.refusal == Refusal::kNone);
  CHECK(gate.admit(RoutePriority::kNormal, 0).refusal == Refusal::kAdaptive);  // starts at its floor
}

}  // namespace
}  // namespace sluice
