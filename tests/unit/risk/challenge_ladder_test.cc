#include "risk/challenge_ladder.h"

#include <catch2/catch.hpp>

namespace sluice::risk {
namespace {

// pow(1) < slider(2) < sms(3) < face(4); 30 pow, 50 slider, 70 sms, 90 block.
ChallengeLadder makeLadder(bool monitor = false, uint8_t maxAttempts = 3,
                           RiskAction fallback = RiskAction::kBlock, uint8_t fallbackLevel = 0) {
  return ChallengeLadder("default",
                         {{30, RiskAction::kChallenge, 1}, {50, RiskAction::kChallenge, 2},
                          {70, RiskAction::kChallenge, 3}, {90, RiskAction::kBlock, 0}},
                         4, monitor, maxAttempts, fallback, fallbackLevel, 60 * kSeconds);
}

TEST_CASE("ladder thresholds: allow, levels, block, boundaries", "[risk][ladder]") {
  auto l = makeLadder();
  auto at = [&](int score) {
    LadderState s;
    return l.decide(score, 0, s, 100 * kSeconds);
  };
  CHECK(at(0).action == RiskAction::kAllow);
  CHECK(at(29).action == RiskAction::kAllow);
  CHECK(at(30).action == RiskAction::kChallenge);
  CHECK(at(30).level == 1);
  CHECK(at(49).level == 1);
  CHECK(at(50).level == 2);
  CHECK(at(70).level == 3);
  CHECK(at(89).level == 3);
  CHECK(at(90).action == RiskAction::kBlock);
  CHECK(at(100).action == RiskAction::kBlock);
}

TEST_CASE("ladder: a token at or above the level satisfies it", "[risk][ladder]") {
  auto l = makeLadder();
  LadderState s;
  auto o = l.decide(55, 2, s, kSeconds);
  CHECK(o.action == RiskAction::kAllow);
  CHECK(o.satisfiedByToken);
  o = l.decide(55, 4, s, kSeconds);
  CHECK(o.action == RiskAction::kAllow);
  o = l.decide(55, 1, s, kSeconds);
  CHECK(o.action == RiskAction::kChallenge);
  CHECK(o.level == 2);
  // A token never lifts a block.
  CHECK(l.decide(95, 4, s, kSeconds).action == RiskAction::kBlock);
}

TEST_CASE("ladder: an unanswered challenge raises the next level", "[risk][ladder]") {
  auto l = makeLadder();
  LadderState s;
  Nanos t = 1000 * kSeconds;
  auto o = l.decide(35, 0, s, t);
  CHECK(o.level == 1);
  CHECK(s.pendingLevel == 1);
  CHECK(s.attempts == 1);
  // Subresources while pending: same challenge, not a new attempt.
  o = l.decide(35, 0, s, t + 5 * kSeconds);
  CHECK(o.level == 1);
  CHECK(s.attempts == 1);
  // Still unanswered a minute later: escalate.
  o = l.decide(35, 0, s, t + 61 * kSeconds);
  CHECK(o.escalated);
  CHECK(o.level == 2);
  CHECK(s.attempts == 2);
}

// Bug pinned: another worker issued the challenge with a clock reading a second later than this
// worker's; `tick - pendingSince` wrapped to 136 years and escalated at once.
TEST_CASE("ladder: a challenge stamped by a later clock reading is not unanswered",
          "[risk][ladder]") {
  auto l = makeLadder();
  LadderState s;
  const Nanos t = 1000 * kSeconds;
  CHECK(l.decide(35, 0, s, t + kSeconds).level == 1);  // the other worker, a second ahead
  auto o = l.decide(35, 0, s, t + 999 * kMillis);      // this worker's reading
  CHECK_FALSE(o.escalated);
  CHECK(o.level == 1);
  CHECK(s.attempts == 1);
}

TEST_CASE("ladder: failures raise, passes lower", "[risk][ladder]") {
  auto l = makeLadder();
  LadderState s;
  l.decide(35, 0, s, kSeconds);
  ChallengeLadder::onResult(s, false, 4);
  CHECK(s.escalation == 1);
  CHECK(s.failures == 1);
  CHECK(l.decide(35, 0, s, 2 * kSeconds).level == 2);
  ChallengeLadder::onResult(s, true, 4);
  CHECK(s.escalation == 0);
  CHECK(s.attempts == 0);
  CHECK(s.failures == 0);
  CHECK(l.decide(35, 0, s, 3 * kSeconds).level == 1);
  // Escalation is capped at the top level.
  for (int i = 0; i < 10; ++i) ChallengeLadder::onResult(s, false, 4);
  CHECK(s.escalation == 4);
  s.attempts = 0;
  CHECK(l.decide(35, 0, s, 4 * kSeconds).level == 4);
}

TEST_CASE("ladder: the attempt cap leads to the fallback, never a loop", "[risk][ladder]") {
  SECTION("block") {
    auto l = makeLadder(false, 3);
    LadderState s;
    RiskAction last = RiskAction::kAllow;
    for (int i = 0; i < 10; ++i) {
      auto o = l.decide(35, 0, s, (i + 1) * 100 * kSeconds);  // each one unanswered
      last = o.action;
      if (i >= 3) {
        CHECK(o.fallback);
        CHECK(o.action == RiskAction::kBlock);
      }
    }
    CHECK(last == RiskAction::kBlock);
    CHECK(s.attempts == 3);
  }
  SECTION("a fixed level") {
    auto l = makeLadder(false, 2, RiskAction::kChallenge, 4);
    LadderState s;
    for (int i = 0; i < 5; ++i) l.decide(35, 0, s, (i + 1) * 100 * kSeconds);
    auto o = l.decide(35, 0, s, 1000 * kSeconds);
    CHECK(o.fallback);
    CHECK(o.action == RiskAction::kChallenge);
    CHECK(o.level == 4);
    CHECK(l.decide(35, 4, s, 1001 * kSeconds).action == RiskAction::kAllow);
  }
}

TEST_CASE("ladder: monitor mode reports and never acts", "[risk][ladder]") {
  auto l = makeLadder(true);
  LadderState s;
  auto o = l.decide(95, 0, s, kSeconds);
  CHECK(o.action == RiskAction::kAllow);
  CHECK(o.wouldAction == RiskAction::kBlock);
  o = l.decide(55, 0, s, kSeconds);
  CHECK(o.action == RiskAction::kAllow);
  CHECK(o.wouldAction == RiskAction::kChallenge);
  CHECK(o.wouldLevel == 2);
  CHECK(s.attempts == 0);
  CHECK(s.pendingLevel == 0);
  CHECK_FALSE(o.stateChanged);
}

}  // namespace
}  // namespace sluice::risk
