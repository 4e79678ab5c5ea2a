#include "limiter/gcra.h"

#include <catch2/catch.hpp>
#include <vector>

#include "core/clock.h"

namespace sluice::limiter {
namespace {

constexpr Nanos kMs = kMillis;

GcraLimiter makeLimiter(const GcraParams& p, size_t memory = 1 << 16) {
  REQUIRE(p.validate() == nullptr);
  return GcraLimiter(p, std::make_shared<GcraTable>(memory, p.resolution));
}

// One request of a trace and what nginx's limit_req decides for it.
struct Step {
  Nanos at;
  Verdict verdict;
  Nanos delay = 0;
};

void play(GcraLimiter& limiter, uint64_t key, const std::vector<Step>& trace) {
  for (size_t i = 0; i < trace.size(); ++i) {
    INFO("request " << i << " at " << trace[i].at << " ns");
    const RateDecision d = limiter.take(key, trace[i].at, 1, nullptr);
    CHECK(verdictName(d.verdict) == std::string(verdictName(trace[i].verdict)));
    CHECK(d.delay == trace[i].delay);
  }
}

TEST_CASE("nginx rate=1r/s, no burst: one request per second", "[limiter][gcra]") {
  for (GcraResolution res : {GcraResolution::kNanos, GcraResolution::kNginxMillis}) {
    GcraParams p = GcraParams::perSecond(1);
    p.resolution = res;
    GcraLimiter limiter = makeLimiter(p);
    // nginx: excess' = excess - 1000 * ms / 1000 + 1000, reject when > 0.
    play(limiter, 7,
         {{0, Verdict::kAllow},                 // new node: excess 0
          {100 * kMs, Verdict::kReject},        // 0 - 100 + 1000 = 900
          {999 * kMs, Verdict::kReject},        // 0 - 999 + 1000 = 1
          {1000 * kMs, Verdict::kAllow},        // 0 - 1000 + 1000 = 0, last = 1000
          {1500 * kMs, Verdict::kReject},       // 500
          {2000 * kMs, Verdict::kAllow},
          {10000 * kMs, Verdict::kAllow},       // long gap clamps at 0
          {10000 * kMs, Verdict::kReject}});    // clock not moving
  }
}

TEST_CASE("nginx burst without nodelay delays every excess request", "[limiter][gcra]") {
  for (GcraResolution res : {GcraResolution::kNanos, GcraResolution::kNginxMillis}) {
    GcraParams p = GcraParams::perSecond(1, 2);
    p.resolution = res;
    GcraLimiter limiter = makeLimiter(p);
    // excess 0, 1000, 2000 (delay = excess * 1000 / rate ms), then 3000 > 2000.
    play(limiter, 1,
         {{0, Verdict::kAllow},
          {0, Verdict::kDelay, 1000 * kMs},
          {0, Verdict::kDelay, 2000 * kMs},
          {0, Verdict::kReject},
          // 500 ms later: 2000 - 500 + 1000 = 2500 > 2000
          {500 * kMs, Verdict::kReject},
          // 1000 ms: 2000 - 1000 + 1000 = 2000: delayed 2 s
          {1000 * kMs, Verdict::kDelay, 2000 * kMs}});
  }
}

TEST_CASE("nginx delay=N: the first N excess requests pass at once", "[limiter][gcra]") {
  for (GcraResolution res : {GcraResolution::kNanos, GcraResolution::kNginxMillis}) {
    GcraParams p = GcraParams::perSecond(1, 3);
    p.delay = 1;
    p.resolution = res;
    GcraLimiter limiter = makeLimiter(p);
    play(limiter, 1,
         {{0, Verdict::kAllow},                   // excess 0
          {0, Verdict::kAllow},                   // 1000 <= delay 1000
          {0, Verdict::kDelay, 1000 * kMs},       // (2000 - 1000) * 1000 / 1000
          {0, Verdict::kDelay, 2000 * kMs},       // 3000
          {0, Verdict::kReject}});                // 4000 > 3000
  }
}

TEST_CASE("nginx nodelay: burst passes at once, then one per interval", "[limiter][gcra]") {
  for (GcraResolution res : {GcraResolution::kNanos, GcraResolution::kNginxMillis}) {
    GcraParams p = GcraParams::perSecond(1, 3);
    p.nodelay = true;
    p.resolution = res;
    GcraLimiter limiter = makeLimiter(p);
    play(limiter, 1,
         {{0, Verdict::kAllow},
          {0, Verdict::kAllow},
          {0, Verdict::kAllow},
          {0, Verdict::kAllow},       // exactly burst + 1 at one instant
          {0, Verdict::kReject},
          {999 * kMs, Verdict::kReject},
          {1000 * kMs, Verdict::kAllow},
          {1000 * kMs, Verdict::kReject}});
  }
}

TEST_CASE("nginx mode reproduces the r/m truncation: 1r/m is 16 milli-requests per second",
          "[limiter][gcra]") {
  // nginx stores rate = 1 * 1000 / 60 = 16, so 60 s drain only 960 of the 1000 a request adds:
  // a second request passes at 62.5 s, not 60 s. The ns mode is exact.
  GcraParams p = GcraParams::perMinute(1);
  p.resolution = GcraResolution::kNginxMillis;
  GcraLimiter nginx = makeLimiter(p);
  play(nginx, 1,
       {{0, Verdict::kAllow},
        {60000 * kMs, Verdict::kReject},   // 0 - 16 * 60000 / 1000 + 1000 = 40
        {62499 * kMs, Verdict::kReject},   // 0 - 999 + 1000 = 1
        {62500 * kMs, Verdict::kAllow}});  // 0 - 1000 + 1000 = 0
  GcraLimiter exact = makeLimiter(GcraParams::perMinute(1));
  play(exact, 1, {{0, Verdict::kAllow}, {60000 * kMs, Verdict::kAllow}});
}

TEST_CASE("nginx measures elapsed time in whole milliseconds (ngx_current_msec)",
          "[limiter][gcra]") {
  // 2000 r/s, no burst: one request per 0.5 ms.
  GcraParams p = GcraParams::perSecond(2000);
  SECTION("two requests inside one millisecond: nginx sees 0 ms elapsed and rejects") {
    p.resolution = GcraResolution::kNginxMillis;
    GcraLimiter nginx = makeLimiter(p);
    play(nginx, 1, {{100'000, Verdict::kAllow}, {700'000, Verdict::kReject}});
    // The ns mode sees the real 0.6 ms > 0.5 ms and accepts.
    GcraLimiter exact = makeLimiter(GcraParams::perSecond(2000));
    play(exact, 1, {{100'000, Verdict::kAllow}, {700'000, Verdict::kAllow}});
  }
  SECTION("a millisecond tick between 0.9 ms and 1.0 ms counts as a whole ms for nginx") {
    GcraParams q = GcraParams::perSecond(1000);  // 1 ms interval
    q.resolution = GcraResolution::kNginxMillis;
    GcraLimiter nginx = makeLimiter(q);
    // now_ms 0 then 1: drain = 1000000 * 1 / 1000 = 1000 -> excess 0: accepted
    play(nginx, 1, {{900'000, Verdict::kAllow}, {1'000'000, Verdict::kAllow}});
    GcraLimiter exact = makeLimiter(GcraParams::perSecond(1000));
    // 0.1 ms apart at a 1 ms interval: rejected
    play(exact, 1, {{900'000, Verdict::kAllow}, {1'000'000, Verdict::kReject}});
  }
}

TEST_CASE("nginx truncation of rate * ms / 1000 loses sub-unit drain", "[limiter][gcra]") {
  // 3 r/s: rate 3000; 333 ms drains 999, so 333 ms after an accept is still 1 over.
  GcraParams p = GcraParams::perSecond(3);
  p.resolution = GcraResolution::kNginxMillis;
  GcraLimiter nginx = makeLimiter(p);
  play(nginx, 1,
       {{0, Verdict::kAllow},
        {333 * kMs, Verdict::kReject},
        {334 * kMs, Verdict::kAllow},    // 0 - 1002 + 1000 -> 0, last = 334
        {667 * kMs, Verdict::kReject},   // 333 ms: 1
        {668 * kMs, Verdict::kAllow}});
}

TEST_CASE("gcra ns mode: sub-millisecond rates are exact", "[limiter][gcra]") {
  GcraParams p = GcraParams::perSecond(100000, 0);  // 10 us interval
  GcraLimiter limiter = makeLimiter(p);
  Nanos t = 5 * kSeconds;
  int allowed = 0;
  for (int i = 0; i < 1000; ++i, t += 2500) {  // 4x the rate for 2.5 ms
    allowed += !limiter.take(1, t, 1, nullptr).rejected();
  }
  CHECK(allowed == 250);
}

TEST_CASE("gcra reports remaining, reset and retry-after", "[limiter][gcra]") {
  GcraParams p = GcraParams::perSecond(10, 4);  // 100 ms interval, 5 at once
  p.nodelay = true;
  GcraLimiter limiter = makeLimiter(p);
  RateDecision d = limiter.take(1, 0, 1, nullptr);
  CHECK(d.limit == 5);
  CHECK(d.remaining == 4);
  CHECK(d.reset == 100 * kMs);
  for (int i = 0; i < 4; ++i) d = limiter.take(1, 0, 1, nullptr);
  CHECK(d.verdict == Verdict::kAllow);
  CHECK(d.remaining == 0);
  CHECK(d.reset == 500 * kMs);
  d = limiter.take(1, 30 * kMs, 1, nullptr);
  CHECK(d.rejected());
  CHECK(d.retryAfter == 70 * kMs);
  CHECK_FALSE(d.charged);
  CHECK_FALSE(limiter.take(1, 100 * kMs - 1, 1, nullptr).verdict == Verdict::kAllow);
  CHECK(limiter.take(1, 100 * kMs, 1, nullptr).verdict == Verdict::kAllow);
}

TEST_CASE("gcra peek decides without charging or inserting", "[limiter][gcra]") {
  GcraLimiter limiter = makeLimiter(GcraParams::perSecond(1));
  for (int i = 0; i < 5; ++i) CHECK(limiter.peek(9, 0, 1).verdict == Verdict::kAllow);
  CHECK(limiter.table()->entries.liveEntries() == 0);
  CHECK(limiter.take(9, 0, 1, nullptr).verdict == Verdict::kAllow);
  CHECK(limiter.peek(9, 0, 1).rejected());
}

TEST_CASE("gcra refund restores the bucket exactly", "[limiter][gcra]") {
  for (GcraResolution res : {GcraResolution::kNanos, GcraResolution::kNginxMillis}) {
    GcraParams p = GcraParams::perSecond(1, 1);
    p.nodelay = true;
    p.resolution = res;
    GcraLimiter limiter = makeLimiter(p);
    ChargeReceipt r;
    CHECK(limiter.take(1, 0, 1, &r).verdict == Verdict::kAllow);
    limiter.refund(r, 0);
    CHECK(limiter.table()->entries.liveEntries() == 0);  // a refunded new key leaves no entry
    CHECK(limiter.take(1, 0, 1, nullptr).verdict == Verdict::kAllow);
    CHECK(limiter.take(1, 0, 1, &r).verdict == Verdict::kAllow);
    limiter.refund(r, 0);
    CHECK(limiter.take(1, 0, 1, nullptr).verdict == Verdict::kAllow);
    CHECK(limiter.take(1, 0, 1, nullptr).rejected());
  }
}

TEST_CASE("gcra refund after another charge subtracts only its own cost", "[limiter][gcra]") {
  GcraParams p = GcraParams::perSecond(1, 2);
  p.nodelay = true;
  GcraLimiter limiter = makeLimiter(p);
  ChargeReceipt mine;
  limiter.take(1, 0, 1, &mine);
  limiter.take(1, 0, 1, nullptr);  // someone else's request
  limiter.refund(mine, 0);
  CHECK(limiter.take(1, 0, 1, nullptr).verdict == Verdict::kAllow);  // 2 of 3 used
  CHECK(limiter.take(1, 0, 1, nullptr).verdict == Verdict::kAllow);  // 3 of 3
  CHECK(limiter.take(1, 0, 1, nullptr).rejected());
}

TEST_CASE("gcra counting rejected requests penalises a flood, capped", "[limiter][gcra]") {
  GcraParams p = GcraParams::perSecond(1, 0);
  p.countRejected = true;
  p.penaltyCap = 10 * kSeconds;
  GcraLimiter limiter = makeLimiter(p);
  CHECK(limiter.take(1, 0, 1, nullptr).verdict == Verdict::kAllow);
  for (int i = 0; i < 1000; ++i) CHECK(limiter.take(1, 0, 1, nullptr).rejected());
  // Without the penalty the key would pass at 1 s; with it, 10 s later at most.
  CHECK(limiter.peek(1, 5 * kSeconds, 1).rejected());
  CHECK(limiter.peek(1, 11 * kSeconds - 1, 1).rejected());
  CHECK(limiter.take(1, 11 * kSeconds, 1, nullptr).verdict == Verdict::kAllow);

  GcraParams lenient = GcraParams::perSecond(1, 0);
  GcraLimiter plain = makeLimiter(lenient);
  plain.take(1, 0, 1, nullptr);
  for (int i = 0; i < 1000; ++i) plain.take(1, 0, 1, nullptr);
  CHECK(plain.take(1, kSeconds, 1, nullptr).verdict == Verdict::kAllow);
}

TEST_CASE("gcra survives huge clock gaps", "[limiter][gcra]") {
  for (GcraResolution res : {GcraResolution::kNanos, GcraResolution::kNginxMillis}) {
    GcraParams p = GcraParams::perSecond(1000000, 5);
    p.nodelay = true;
    p.resolution = res;
    GcraLimiter limiter = makeLimiter(p);
    for (int i = 0; i < 6; ++i) CHECK_FALSE(limiter.take(1, 0, 1, nullptr).rejected());
    const Nanos years = Nanos{30} * 365 * 24 * 3600 * kSeconds;
    for (int i = 0; i < 6; ++i) CHECK_FALSE(limiter.take(1, years, 1, nullptr).rejected());
    CHECK(limiter.take(1, years, 1, nullptr).rejected());
  }
}

// Bug pinned: workers share one table but each stamps with its own clock reading. In nginx mode a
// request whose reading was 1 ms behind the stored `last` computed an elapsed time of 2^40 - 1
// ms, drained the whole excess and passed a fresh burst; the eviction check saw the entry idle.
TEST_CASE("gcra nginx mode: a reading behind the stored stamp is no time, not a 34-year drain",
          "[limiter][gcra]") {
  GcraParams p = GcraParams::perSecond(10, 4);
  p.nodelay = true;
  p.resolution = GcraResolution::kNginxMillis;
  GcraLimiter limiter = makeLimiter(p);
  const Nanos t = 5000 * kMs;
  for (int i = 0; i < 5; ++i) CHECK_FALSE(limiter.take(1, t, 1, nullptr).rejected());
  CHECK(limiter.take(1, t - kMs, 1, nullptr).rejected());
  CHECK(limiter.take(1, t - 3 * kSeconds, 1, nullptr).rejected());
  uint64_t state = 0;
  limiter.table()->entries.read(1, [&](const uint64_t& s) { state = s; });
  CHECK_FALSE(limiter.algorithm().idle(state, t - kMs));
  CHECK(limiter.algorithm().debt(state, t - kMs) == limiter.algorithm().debt(state, t));
  // Time moving forward again drains as before: 100 ms is one request.
  CHECK_FALSE(limiter.take(1, t + 100 * kMs, 1, nullptr).rejected());
  CHECK(limiter.take(1, t + 100 * kMs, 1, nullptr).rejected());
}

TEST_CASE("gcra rate change on reload keeps the key's state", "[limiter][gcra]") {
  GcraParams fast = GcraParams::perSecond(10, 9);  // 100 ms, 10 at once
  fast.nodelay = true;
  GcraTablePtr table = GcraLimiter::reuseOrCreateTable(nullptr, fast, 1 << 16);
  GcraLimiter before(fast, table);
  for (int i = 0; i < 10; ++i) CHECK_FALSE(before.take(1, 0, 1, nullptr).rejected());
  // TAT is now 1 s ahead. The reload halves the rate: 200 ms interval, burst 9 -> 2 s tolerance.
  GcraParams slow = GcraParams::perSecond(5, 9);
  slow.nodelay = true;
  GcraTablePtr kept = GcraLimiter::reuseOrCreateTable(table, slow, 1 << 16);
  CHECK(kept == table);
  GcraLimiter after(slow, kept);
  // 1 s of debt = 5 requests at the new rate: 5 more fit in the 2 s tolerance.
  for (int i = 0; i < 5; ++i) CHECK_FALSE(after.take(1, 0, 1, nullptr).rejected());
  CHECK(after.take(1, 0, 1, nullptr).rejected());
  // Switching the resolution changes the state format: a new table.
  GcraParams nginx = slow;
  nginx.resolution = GcraResolution::kNginxMillis;
  CHECK(GcraLimiter::reuseOrCreateTable(table, nginx, 1 << 16) != table);
  CHECK(GcraLimiter::reuseOrCreateTable(table, slow, 1 << 20) != table);
}

TEST_CASE("gcra weighted cost", "[limiter][gcra]") {
  GcraParams p = GcraParams::perSecond(10, 9);
  p.nodelay = true;
  GcraLimiter limiter = makeLimiter(p);
  CHECK_FALSE(limiter.take(1, 0, 6, nullptr).rejected());
  CHECK(limiter.take(1, 0, 5, nullptr).rejected());
  CHECK_FALSE(limiter.take(1, 0, 4, nullptr).rejected());
  CHECK(limiter.take(2, 0, 11, nullptr).rejected());  // more than the bucket holds
  CHECK(limiter.table()->entries.liveEntries() == 1);  // and the key was not stored
}

TEST_CASE("gcra params validation", "[limiter][gcra]") {
  GcraParams p;
  CHECK(p.validate() == nullptr);
  p.requests = 0;
  CHECK(p.validate() != nullptr);
  p = GcraParams::perSecond(1, 20000);
  CHECK(p.validate() == nullptr);
  p.resolution = GcraResolution::kNginxMillis;
  CHECK(p.validate() != nullptr);  // excess would not fit 24 bits
  GcraParams hourly;
  hourly.period = 3600 * kSeconds;
  hourly.resolution = GcraResolution::kNginxMillis;
  CHECK(hourly.validate() != nullptr);  // 1 r/h is below nginx's 1/1000 r/s unit
}

TEST_CASE("gcra idle means equivalent to a fresh key", "[limiter][gcra]") {
  Gcra ns(GcraParams::perSecond(1));
  uint64_t s = 0;
  ns.charge(s, true, 0, 1);
  CHECK_FALSE(ns.idle(s, kSeconds - 1));
  CHECK(ns.idle(s, kSeconds));
  GcraParams p = GcraParams::perSecond(1);
  p.resolution = GcraResolution::kNginxMillis;
  Gcra nginx(p);
  uint64_t n = 0;
  nginx.charge(n, true, 0, 1);
  nginx.charge(n, false, 1000 * kMs, 1);  // excess 0, last 1000
  nginx.charge(n, false, 1000 * kMs, 0);  // a zero-cost touch leaves it at 0
  // Idle only once the next request's +1000 would drain away too, as for a new node.
  CHECK_FALSE(nginx.idle(n, 1999 * kMs));
  CHECK(nginx.idle(n, 2000 * kMs));
}

}  // namespace
}  // namespace sluice::limiter
