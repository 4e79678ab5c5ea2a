#include "limiter/admission.h"

#include <catch2/catch.hpp>
#include <vector>

#include "core/clock.h"
#include "limiter/gcra.h"
#include "limiter/sliding_window.h"

namespace sluice::limiter {
namespace {

constexpr Nanos kMs = kMillis;

GcraLimiter gcra(GcraParams p) {
  REQUIRE(p.validate() == nullptr);
  return GcraLimiter(p, std::make_shared<GcraTable>(1 << 16, p.resolution));
}

GcraParams nodelay(uint64_t perSecond, uint32_t burst) {
  GcraParams p = GcraParams::perSecond(perSecond, burst);
  p.nodelay = true;
  return p;
}

TEST_CASE("a later rule's rejection uncharges the earlier ones (nginx two zones)",
          "[limiter][admission]") {
  // nginx: limit_req zone=member burst=5 nodelay; limit_req zone=ip;  (both 1 r/s)
  // A request rejected by the IP zone never reaches the member zone's account step.
  for (GcraResolution res : {GcraResolution::kNanos, GcraResolution::kNginxMillis}) {
    GcraParams memberP = nodelay(1, 5);
    memberP.resolution = res;
    GcraParams ipP = GcraParams::perSecond(1);
    ipP.resolution = res;
    GcraLimiter member = gcra(memberP);
    GcraLimiter ip = gcra(ipP);
    const RateRuleCheck checks[] = {{&member, 42}, {&ip, 7}};
    CHECK(admit(checks, {}, 0).verdict == Verdict::kAllow);
    for (int i = 0; i < 6; ++i) {
      const Admission a = admit(checks, {}, 0);
      CHECK(a.rejected());
      CHECK(a.rejectedBy == RuleKind::kRate);
      CHECK(a.rejectedIndex == 1);
      CHECK(a.retryAfter == kSeconds);
    }
    // The member bucket holds only the accepted request: the IP rejections left its other 5.
    for (int i = 0; i < 5; ++i) CHECK_FALSE(member.take(42, 0, 1, nullptr).rejected());
    CHECK(member.take(42, 0, 1, nullptr).rejected());
  }
}

TEST_CASE("rules that count rejected requests keep their charge", "[limiter][admission]") {
  GcraParams ipP = nodelay(1, 2);
  ipP.countRejected = true;  // penalise the IP flood
  GcraLimiter ip = gcra(ipP);
  GcraLimiter item = gcra(GcraParams::perSecond(1));  // never drained by rejected calls
  const RateRuleCheck checks[] = {{&ip, 1}, {&item, 99}};
  CHECK(admit(checks, {}, 0).verdict == Verdict::kAllow);
  CHECK(admit(checks, {}, 0).rejected());  // item rejects; ip keeps its charge
  CHECK(admit(checks, {}, 0).rejected());
  // ip has counted 3 requests: full, although only one request went through.
  CHECK(ip.peek(1, 0, 1).rejected());
  // item counted only the accepted one.
  CHECK(item.peek(99, kSeconds, 1).verdict == Verdict::kAllow);
}

TEST_CASE("after a rejection only counting rules are still evaluated", "[limiter][admission]") {
  GcraLimiter first = gcra(GcraParams::perSecond(1));
  GcraLimiter uncounted = gcra(nodelay(1, 10));
  GcraParams countedP = nodelay(1, 10);
  countedP.countRejected = true;
  GcraLimiter counted = gcra(countedP);
  first.take(1, 0, 1, nullptr);  // exhaust: the next admit is rejected by rule 0
  const RateRuleCheck checks[] = {{&first, 1}, {&uncounted, 2}, {&counted, 3}};
  RateDecision decisions[3];
  const Admission a = admit(checks, {}, 0, decisions);
  CHECK(a.rejectedIndex == 0);
  CHECK_FALSE(decisions[1].charged);  // skipped
  CHECK(decisions[2].charged);        // still counted
  CHECK(uncounted.table()->entries.liveEntries() == 0);
  CHECK(counted.table()->entries.liveEntries() == 1);
}

TEST_CASE("shadow rules report but never reject", "[limiter][admission]") {
  GcraLimiter shadow = gcra(GcraParams::perSecond(1));
  GcraLimiter real = gcra(nodelay(1, 10));
  const RateRuleCheck checks[] = {{&shadow, 1, 1, RuleMode::kShadow}, {&real, 1}};
  CHECK(admit(checks, {}, 0).verdict == Verdict::kAllow);
  const Admission a = admit(checks, {}, 0);
  CHECK(a.verdict == Verdict::kAllow);
  CHECK(a.shadowRejects == 1u);
}

TEST_CASE("the longest delay wins and the tightest rule is reported", "[limiter][admission]") {
  GcraLimiter a = gcra(GcraParams::perSecond(10, 5));  // 100 ms interval, delays
  GcraLimiter b = gcra(GcraParams::perSecond(1, 5));   // 1 s interval, delays
  const RateRuleCheck checks[] = {{&a, 1}, {&b, 1}};
  CHECK(admit(checks, {}, 0).verdict == Verdict::kAllow);
  const Admission second = admit(checks, {}, 0);
  CHECK(second.verdict == Verdict::kDelay);
  CHECK(second.delay == kSeconds);
  CHECK(second.tightestRateRule == 0);  // both have 4 left; the first one found is kept
}

TEST_CASE("a delay past the rule's maxDelay is an uncharged rejection by that rule",
          "[limiter][admission]") {
  GcraLimiter member = gcra(nodelay(1, 10));
  GcraLimiter spaced = gcra(GcraParams::perSecond(2, 10));  // 500 ms interval, delays
  RateRuleCheck checks[] = {{&member, 1}, {&spaced, 1, 1, RuleMode::kEnforce, 600 * kMs}};
  CHECK(admit(checks, {}, 0).verdict == Verdict::kAllow);
  const Admission second = admit(checks, {}, 0);
  CHECK(second.verdict == Verdict::kDelay);
  CHECK(second.delay == 500 * kMs);
  RateDecision d[2];
  for (int i = 0; i < 3; ++i) {
    const Admission a = admit(checks, {}, 0, d);
    CHECK(a.rejected());
    CHECK(a.rejectedBy == RuleKind::kRate);
    CHECK(a.rejectedIndex == 1);
    CHECK(a.retryAfter == 400 * kMs);  // a 1 s delay fits 600 ms once 400 ms have passed
    CHECK(a.delay == 0);
    CHECK(d[1].rejected());
  }
  // Nothing of the refused requests was kept: at 400 ms the next one is delayed 600 ms, and
  // the member rule spent 2 of its 11.
  CHECK(admit(checks, {}, 400 * kMs).delay == 600 * kMs);
  int allowed = 0;
  for (int i = 0; i < 20; ++i) allowed += !member.take(1, 400 * kMs, 1, nullptr).rejected();
  CHECK(allowed == 8);
  // A rule that counts rejected requests keeps paying for them; no bound: no rejection.
  GcraParams penal = GcraParams::perSecond(2, 10);
  penal.countRejected = true;
  GcraLimiter counting = gcra(penal);
  const RateRuleCheck c2[] = {{&counting, 1, 1, RuleMode::kEnforce, 600 * kMs}};
  for (int i = 0; i < 2; ++i) CHECK_FALSE(admit(c2, {}, 0).rejected());
  CHECK(admit(c2, {}, 0).rejected());
  CHECK(admit(c2, {}, 0).retryAfter == 900 * kMs);  // the refused one before cost 500 ms
  const RateRuleCheck unbounded[] = {{&spaced, 2}};
  for (int i = 0; i < 5; ++i) CHECK(admit(unbounded, {}, 0).delay == 500 * kMs * i);
}

TEST_CASE("concurrency rules are acquired after rate rules and roll everything back",
          "[limiter][admission]") {
  GcraLimiter rate = gcra(nodelay(1, 10));
  ConcurrencyLimiter route(1);
  KeyedConcurrencyLimiter perMember(5, 1 << 16);
  const RateRuleCheck rates[] = {{&rate, 1}};
  const ConcurrencyRuleCheck gates[] = {{&perMember, 42}, {&route, 0}};
  Admission first = admit(rates, gates, 0);
  CHECK(first.verdict == Verdict::kAllow);
  CHECK(first.slotCount == 2);
  CHECK(route.inFlight() == 1);
  CHECK(perMember.inFlight(42) == 1);

  const Admission second = admit(rates, gates, 0);
  CHECK(second.rejected());
  CHECK(second.rejectedBy == RuleKind::kConcurrency);
  CHECK(second.rejectedIndex == 1);
  CHECK(second.slotCount == 0);
  CHECK(perMember.inFlight(42) == 1);  // the member slot taken for the rejected request is back
  // The rate charge of the rejected request was refunded: 10 more fit, not 9.
  first = Admission();  // request done: slots released
  CHECK(route.inFlight() == 0);
  CHECK(perMember.inFlight(42) == 0);
  int allowed = 0;
  for (int i = 0; i < 20; ++i) allowed += !rate.take(1, 0, 1, nullptr).rejected();
  CHECK(allowed == 10);
}

TEST_CASE("a rate rejection acquires no concurrency slot", "[limiter][admission]") {
  GcraLimiter rate = gcra(GcraParams::perSecond(1));
  ConcurrencyLimiter route(10);
  const RateRuleCheck rates[] = {{&rate, 1}};
  const ConcurrencyRuleCheck gates[] = {{&route, 0}};
  Admission ok = admit(rates, gates, 0);
  CHECK(route.inFlight() == 1);
  CHECK(admit(rates, gates, 0).rejected());
  CHECK(route.inFlight() == 1);
}

TEST_CASE("mixed algorithms: quota and leaky bucket in one request", "[limiter][admission]") {
  SlidingWindowParams qp;
  qp.limit = 3;
  qp.window = 60 * kSeconds;
  SlidingWindowLimiter quota(qp, std::make_shared<SlidingWindowTable>(1 << 16));
  GcraLimiter burst = gcra(nodelay(1, 1));
  const RateRuleCheck checks[] = {{&quota, 5}, {&burst, 5}};
  int allowed = 0;
  for (int i = 0; i < 10; ++i) allowed += !admit(checks, {}, static_cast<Nanos>(i) * 400 * kMs).rejected();
  // burst: 2 at once then one per second over 3.6 s -> 5; quota stops it at 3.
  CHECK(allowed == 3);
  CHECK(quota.peek(5, 4 * kSeconds, 1).rejected());
}

}  // namespace
}  // namespace sluice::limiter
