#include "risk/behaviour.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <random>

#include "core/hash.h"

namespace sluice::risk {
namespace {

constexpr uint64_t kIp = 11, kDevice = 22, kMember = 33;

struct Fixture {
  BehaviourTracker tracker{1 << 16};
  BehaviourParams params;
  double maxCv = 0.1;
  Nanos halfLife = 600 * kSeconds;

  BehaviourObservation hit(RouteClass route, Nanos now, uint64_t item = 0, uint64_t ip = kIp,
                           uint64_t device = kDevice, uint64_t member = kMember,
                           uint64_t address = 0) {
    BehaviourEvent ev;
    ev.route = route;
    ev.itemKey = item;
    ev.keys[0] = ip;
    ev.keys[1] = device;
    ev.keys[2] = member;
    ev.addressKey = address;
    return tracker.observe(ev, params, maxCv, halfLife, now);
  }
};

TEST_CASE("behaviour: request rate over a sliding window", "[risk][behaviour]") {
  Fixture f;
  Nanos t = 1000 * kSeconds;
  BehaviourObservation o;
  for (int i = 0; i < 50; ++i) o = f.hit(RouteClass::kPageView, t + i * 100 * kMillis);
  CHECK(o.device().rate == 50);
  // Two windows later the count has slid out.
  o = f.hit(RouteClass::kPageView, t + 130 * kSeconds);
  CHECK(o.device().rate <= 2);
}

TEST_CASE("behaviour: perfectly regular timing is flagged, human timing is not", "[risk][behaviour]") {
  Fixture f;
  Nanos t = 1000 * kSeconds;
  BehaviourObservation o;
  for (int i = 0; i < 8; ++i) o = f.hit(RouteClass::kApi, t + i * 500 * kMillis);
  CHECK(o.device().regular);
  CHECK(o.device().gapCv() < 0.01);

  Fixture h;
  const Nanos gaps[] = {1200, 300, 4500, 800, 2500, 9000, 150, 3300};
  Nanos now = t;
  for (Nanos g : gaps) o = h.hit(RouteClass::kPageView, now += g * kMillis);
  CHECK_FALSE(o.device().regular);
  CHECK(o.device().gapCv() > 0.5);
}

TEST_CASE("behaviour: the regularity judgement agrees with the textbook CV", "[risk][behaviour]") {
  // observe() compares n*sum(g^2) - sum(g)^2 with max^2 * sum(g)^2 in place of
  // sqrt(variance) / mean < max: the same verdict and the same CV on any gaps.
  std::mt19937_64 rng(7);
  int judged = 0, regular = 0;
  for (int round = 0; round < 2000; ++round) {
    Fixture f;
    f.maxCv = 0.05 + 0.3 * static_cast<double>(rng() % 1000) / 1000;
    const Nanos base = 100 + static_cast<Nanos>(rng() % 3000);
    const Nanos jitter = static_cast<Nanos>(rng() % 4) == 0 ? base : base / 8 + 1;
    Nanos now = 1000 * kSeconds;
    std::vector<double> gaps;
    BehaviourObservation o;
    o = f.hit(RouteClass::kApi, now);
    for (int i = 0; i < 8; ++i) {
      const Nanos g = std::max<Nanos>(1, base + static_cast<Nanos>(rng() % (2 * jitter + 1)) - jitter);
      gaps.push_back(static_cast<double>(g));
      o = f.hit(RouteClass::kApi, now += g * kMillis);
    }
    double mean = 0, sq = 0;
    for (double g : gaps) mean += g;
    mean /= gaps.size();
    for (double g : gaps) sq += (g - mean) * (g - mean);
    const double cv = std::sqrt(sq / gaps.size()) / mean;
    INFO("round " << round << " cv " << cv << " max " << f.maxCv);
    REQUIRE(o.device().gapSamples == 8);
    CHECK(std::abs(o.device().gapCv() - cv) < 1e-5);
    if (std::abs(cv - f.maxCv) > 1e-9) CHECK(o.device().regular == (cv < f.maxCv));
    ++judged;
    regular += o.device().regular;
  }
  CHECK(judged == 2000);
  CHECK(regular > 100);  // both verdicts were exercised
  CHECK(regular < 1900);
}

TEST_CASE("behaviour: too few gaps are never judged", "[risk][behaviour]") {
  Fixture f;
  BehaviourObservation o;
  for (int i = 0; i < 4; ++i) o = f.hit(RouteClass::kApi, (100 + i) * kSeconds);
  CHECK_FALSE(o.device().regular);
  CHECK(o.device().gapCv() < 0);
}

TEST_CASE("behaviour: checkout needs a recent view of that item", "[risk][behaviour]") {
  Fixture f;
  const uint64_t item = hash64("sku-1"), other = hash64("sku-2");
  Nanos t = 1000 * kSeconds;
  CHECK(f.hit(RouteClass::kCheckout, t, item).device().checkoutWithoutView);
  f.hit(RouteClass::kItemDetail, t + kSeconds, other);
  CHECK(f.hit(RouteClass::kCheckout, t + 2 * kSeconds, item).device().checkoutWithoutView);
  f.hit(RouteClass::kItemDetail, t + 3 * kSeconds, item);
  CHECK_FALSE(f.hit(RouteClass::kCheckout, t + 60 * kSeconds, item).device().checkoutWithoutView);
  // The view expires after item_view_window.
  CHECK(f.hit(RouteClass::kCheckout, t + 3 * kSeconds + f.params.itemViewWindow + 2 * kSeconds, item)
            .device()
            .checkoutWithoutView);
}

TEST_CASE("behaviour: API calls with no page view", "[risk][behaviour]") {
  Fixture f;
  Nanos t = 1000 * kSeconds;
  CHECK(f.hit(RouteClass::kApi, t).device().apiWithoutPage);
  f.hit(RouteClass::kPageView, t + kSeconds);
  CHECK_FALSE(f.hit(RouteClass::kApi, t + 2 * kSeconds).device().apiWithoutPage);
}

TEST_CASE("behaviour: distinct members per device and IP, devices and addresses per member",
          "[risk][behaviour]") {
  Fixture f;
  Nanos t = 1000 * kSeconds;
  BehaviourObservation o;
  for (uint64_t m = 1; m <= 6; ++m) o = f.hit(RouteClass::kPageView, t, 0, kIp, kDevice, hash64(std::to_string(m)));
  CHECK(o.device().distinctA >= 5);
  CHECK(o.ip().distinctA >= 5);
  for (uint64_t d = 1; d <= 5; ++d)
    o = f.hit(RouteClass::kPageView, t, 0, kIp, hash64("d" + std::to_string(d)), kMember, hash64("a" + std::to_string(d)));
  CHECK(o.member().distinctA >= 4);
  CHECK(o.member().distinctB >= 4);
  // One member on one device stays exactly one.
  Fixture g;
  for (int i = 0; i < 20; ++i) o = g.hit(RouteClass::kPageView, t + i * kSeconds);
  CHECK(o.device().distinctA == 1);
  CHECK(o.member().distinctA == 1);
}

TEST_CASE("behaviour: sketch estimates", "[risk][behaviour]") {
  CHECK(BehaviourTracker::sketchEstimate(0) == 0);
  CHECK(BehaviourTracker::sketchEstimate(1) == 1);
  CHECK(BehaviourTracker::sketchEstimate(~uint64_t{0}) == 300);
  uint64_t s = 0;
  for (int i = 0; i < 40; ++i) s |= BehaviourTracker::sketchBit(hash64(std::to_string(i)));
  const auto est = BehaviourTracker::sketchEstimate(s);
  CHECK(est >= 25);
  CHECK(est <= 60);
  // The per-bit-count table gives linear counting's formula for every count, whichever bits.
  std::mt19937_64 rng(7);
  for (int bits = 0; bits <= 64; ++bits) {
    uint64_t sketch = 0;
    while (__builtin_popcountll(sketch) < bits) sketch |= uint64_t{1} << (rng() % 64);
    const uint32_t want =
        bits <= 1 ? static_cast<uint32_t>(bits)
        : bits >= 64 ? 300u
                     : static_cast<uint32_t>(std::lround(-64.0 * std::log((64.0 - bits) / 64.0)));
    INFO(bits);
    CHECK(BehaviourTracker::sketchEstimate(sketch) == want);
  }
}

TEST_CASE("behaviour: scores decay with the half-life", "[risk][behaviour]") {
  CHECK(BehaviourTracker::decay(80, 100, 100, 60 * kSeconds) == Approx(80));
  CHECK(BehaviourTracker::decay(80, 100, 160, 60 * kSeconds) == Approx(40).epsilon(0.01));
  CHECK(BehaviourTracker::decay(80, 100, 220, 60 * kSeconds) == Approx(20).epsilon(0.01));
  Fixture f;
  f.halfLife = 60 * kSeconds;
  Nanos t = 1000 * kSeconds;
  f.hit(RouteClass::kPageView, t);
  f.tracker.commit(EntityKind::kDevice, kDevice, 80, nullptr, f.halfLife, t);
  CHECK(f.hit(RouteClass::kPageView, t + 60 * kSeconds).device().decayedScore == Approx(40).epsilon(0.02));
}

TEST_CASE("behaviour: an idle entity starts over", "[risk][behaviour]") {
  Fixture f;
  Nanos t = 1000 * kSeconds;
  for (int i = 0; i < 10; ++i) f.hit(RouteClass::kPageView, t + i * kSeconds);
  auto o = f.hit(RouteClass::kPageView, t + f.params.idleAfter + 20 * kSeconds);
  CHECK(o.device().rate == 1);
}

// Bug pinned: workers share the entity tables but each reads the clock itself. A request whose
// reading was a millisecond behind the stamp another worker had just written computed an
// unsigned `now - lastSeen` of 2^64 ms: the entity counted as idle and its history was wiped
// (rate window, gaps, page views). The same wrap in seconds reset rate windows and sketches.
TEST_CASE("behaviour: a stamp from a later clock reading does not reset the entity",
          "[risk][behaviour]") {
  Fixture f;
  const Nanos t = 1000 * kSeconds;
  BehaviourObservation o;
  for (int i = 0; i < 20; ++i) o = f.hit(RouteClass::kPageView, t + i * 50 * kMillis, 0, kIp, kDevice, kMember, 7 + i);
  REQUIRE(o.device().rate == 20);
  const uint32_t addresses = o.member().distinctB;
  REQUIRE(addresses >= 10);
  // Another worker's request, stamped just past the next second.
  f.hit(RouteClass::kItemDetail, t + kSeconds + kMillis, 42);
  // This worker read the clock a few ms earlier, still in the previous second.
  o = f.hit(RouteClass::kCheckout, t + kSeconds - 2 * kMillis, 42);
  CHECK(o.device().rate == 22);               // the window kept its count
  CHECK_FALSE(o.device().checkoutWithoutView);  // the view a moment "later" counts
  CHECK(o.member().distinctB == addresses);   // the address sketch was not cleared
}

TEST_CASE("behaviour: an explain record is due on a change or after the refresh",
          "[risk][behaviour]") {
  Fixture f;
  const Nanos t = 1000 * kSeconds;
  const Nanos refresh = kSeconds;
  CHECK_FALSE(f.tracker.explainDue(EntityKind::kDevice, kDevice, 40, 0, refresh, t));  // unknown
  f.hit(RouteClass::kPageView, t);
  CHECK(f.tracker.explainDue(EntityKind::kDevice, kDevice, 40, 0, refresh, t));  // first
  CHECK_FALSE(f.tracker.explainDue(EntityKind::kDevice, kDevice, 40, 0, refresh, t + 500 * kMillis));
  CHECK(f.tracker.explainDue(EntityKind::kDevice, kDevice, 41, 0, refresh, t + 600 * kMillis));  // score
  CHECK(f.tracker.explainDue(EntityKind::kDevice, kDevice, 41, 1, refresh, t + 700 * kMillis));  // action
  CHECK_FALSE(f.tracker.explainDue(EntityKind::kDevice, kDevice, 41, 1, refresh, t + 900 * kMillis));
  // A reading a moment behind the last stamp (another worker's) is no time.
  CHECK_FALSE(f.tracker.explainDue(EntityKind::kDevice, kDevice, 41, 1, refresh, t - kSeconds));
  CHECK(f.tracker.explainDue(EntityKind::kDevice, kDevice, 41, 1, refresh, t + 1700 * kMillis));
  // Each entity keeps its own stamp.
  CHECK(f.tracker.explainDue(EntityKind::kIp, kIp, 41, 1, refresh, t + 1700 * kMillis));
  CHECK(f.tracker.explainDue(EntityKind::kMember, kMember, 41, 1, refresh, t + 1700 * kMillis));
}

TEST_CASE("behaviour: commit with an explain stamp marks it as explainDue does, in one visit",
          "[risk][behaviour]") {
  Fixture f;
  const Nanos t = 1000 * kSeconds;
  const ExplainStamp s40{40, 0, kSeconds}, s41{41, 0, kSeconds};
  bool due = true;
  // An unknown entity: nothing stored, nothing due.
  f.tracker.commit(EntityKind::kDevice, kDevice, 40, nullptr, f.halfLife, t, 0, &s40, &due);
  CHECK_FALSE(due);
  f.hit(RouteClass::kPageView, t);
  // A commit without a stamp leaves the entity's explain stamp alone.
  f.tracker.commit(EntityKind::kDevice, kDevice, 40, nullptr, f.halfLife, t);
  f.tracker.commit(EntityKind::kDevice, kDevice, 40, nullptr, f.halfLife, t, 0, &s40, &due);
  CHECK(due);  // first
  EntityState st;
  REQUIRE(f.tracker.read(EntityKind::kDevice, kDevice, &st));
  CHECK(st.score == 40);  // and the score was committed in the same visit
  f.tracker.commit(EntityKind::kDevice, kDevice, 40, nullptr, f.halfLife, t + 500 * kMillis, 0, &s40, &due);
  CHECK_FALSE(due);
  // The two entry points share one stamp: explainDue sees what commit marked, and back.
  CHECK_FALSE(f.tracker.explainDue(EntityKind::kDevice, kDevice, 40, 0, kSeconds, t + 600 * kMillis));
  CHECK(f.tracker.explainDue(EntityKind::kDevice, kDevice, 41, 0, kSeconds, t + 600 * kMillis));
  f.tracker.commit(EntityKind::kDevice, kDevice, 41, nullptr, f.halfLife, t + 700 * kMillis, 0, &s41, &due);
  CHECK_FALSE(due);
  f.tracker.commit(EntityKind::kDevice, kDevice, 41, nullptr, f.halfLife, t + 1700 * kMillis, 0, &s41, &due);
  CHECK(due);  // the refresh passed
}

TEST_CASE("behaviour: tables stay within their byte budget", "[risk][behaviour]") {
  BehaviourTracker tracker(64 * 1024);
  BehaviourParams p;
  for (uint64_t i = 1; i <= 20000; ++i) {
    BehaviourEvent ev;
    ev.route = RouteClass::kPageView;
    ev.keys[0] = hash64(std::to_string(i));
    tracker.observe(ev, p, 0.1, kSeconds, static_cast<Nanos>(i) * kMillis);
  }
  const auto& t = tracker.table(EntityKind::kIp);
  CHECK(t.memoryBytes() <= 64 * 1024);
  CHECK(t.liveEntries() <= t.capacity());
  CHECK(t.stats().evictedActive > 0);
}

}  // namespace
}  // namespace sluice::risk

namespace sluice::risk {

// The per-thread memo of decay factors must give exactly the value exp2 gives, whatever order
// the half-lives and ages come in (a half-life change must not serve the last one's factors).
TEST_CASE("behaviour: memoised decay factors equal a fresh exp2 across half-life changes",
          "[risk][behaviour]") {
  std::mt19937_64 rng(7);
  const Nanos halfLives[] = {kSeconds, 60 * kSeconds, 600 * kSeconds, 3600 * kSeconds};
  for (int i = 0; i < 20000; ++i) {
    const Nanos halfLife = halfLives[rng() % 4] + (rng() % 3 == 0 ? static_cast<Nanos>(rng() % 1000) : 0);
    const uint32_t elapsed = static_cast<uint32_t>(rng() % 4 == 0 ? rng() % 100000 : rng() % 300);
    const double want = std::exp2(-(static_cast<double>(elapsed) * kSeconds) / static_cast<double>(halfLife));
    INFO("half-life " << halfLife << " elapsed " << elapsed);
    REQUIRE(BehaviourTracker::decayFactor(elapsed, halfLife) == want);
    const float score = static_cast<float>(rng() % 10000) / 100.0f + 0.01f;
    REQUIRE(BehaviourTracker::decay(score, 1000, 1000 + elapsed, halfLife) ==
            (elapsed == 0 ? score : static_cast<float>(score * want)));
  }
}

}  // namespace sluice::risk
