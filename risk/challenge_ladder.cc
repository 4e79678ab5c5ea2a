#include "risk/challenge_ladder.h"

#include <algorithm>
#include <cstring>

namespace sluice::risk {

const char* riskActionName(RiskAction a) {
  switch (a) {
    case RiskAction::kAllow: return "allow";
    case RiskAction::kChallenge: return "challenge";
    case RiskAction::kBlock: return "block";
  }
  return "allow";
}

ChallengeLadder::ChallengeLadder(std::string profile, std::vector<LadderStep> steps,
                                 uint8_t levelCount, bool monitor, uint8_t maxAttempts,
                                 RiskAction fallbackAction, uint8_t fallbackLevel,
                                 Nanos unansweredAfter)
    : profile_(std::move(profile)),
      steps_(std::move(steps)),
      levelCount_(levelCount),
      monitor_(monitor),
      maxAttempts_(maxAttempts),
      fallbackAction_(fallbackAction),
      fallbackLevel_(fallbackLevel),
      unansweredAfter_(unansweredAfter) {}

LadderOutcome ChallengeLadder::decide(int score, uint8_t tokenLevel, LadderState& live,
                                      Nanos now) const {
  // Monitor mode works on a copy: it reports what would happen and leaves the entity untouched.
  LadderState scratch = live;
  LadderState& state = monitor_ ? scratch : live;
  const LadderState before = state;
  LadderOutcome out;

  const LadderStep* step = nullptr;
  for (const auto& s : steps_)
    if (score >= s.minScore) step = &s;
  RiskAction action = step ? step->action : RiskAction::kAllow;
  uint8_t level = step ? step->level : 0;

  if (action == RiskAction::kChallenge) {
    const uint32_t tick = secondsTick(now);
    // A challenge issued long ago and still unanswered counts as ignored: raise the level once.
    if (state.pendingLevel != 0 &&
        static_cast<Nanos>(since(state.pendingSince, tick)) * kSeconds >= unansweredAfter_) {
      if (state.escalation < levelCount_) ++state.escalation;
      state.pendingLevel = 0;
      out.escalated = true;
    }
    level = static_cast<uint8_t>(std::min<int>(level + state.escalation, levelCount_));
    if (tokenLevel >= level) {
      action = RiskAction::kAllow;
      out.satisfiedByToken = true;
    } else if (state.attempts >= maxAttempts_) {
      // The cap is final: the fallback level is not escalated further, so this never loops.
      out.fallback = true;
      action = fallbackAction_;
      level = fallbackAction_ == RiskAction::kChallenge ? fallbackLevel_ : 0;
      if (action == RiskAction::kChallenge && tokenLevel >= level) {
        action = RiskAction::kAllow;
        out.satisfiedByToken = true;
      }
    } else if (state.pendingLevel != level) {
      // A new challenge. Requests made while the same one is pending (a page's subresources)
      // are not new attempts.
      if (state.attempts < 255) ++state.attempts;
      state.pendingLevel = level;
      state.pendingSince = tick;
    }
  }
  if (action != RiskAction::kChallenge) level = 0;

  out.wouldAction = action;
  out.wouldLevel = level;
  if (monitor_) {
    out.action = RiskAction::kAllow;
    out.level = 0;
  } else {
    out.action = action;
    out.level = level;
    out.stateChanged = std::memcmp(&before, &state, sizeof state) != 0;
  }
  return out;
}

void ChallengeLadder::onResult(LadderState& state, bool passed, uint8_t levelCount) {
  state.pendingLevel = 0;
  if (passed) {
    if (state.escalation > 0) --state.escalation;
    state.attempts = 0;
    state.failures = 0;
  } else {
    if (state.escalation < levelCount) ++state.escalation;
    if (state.failures < 255) ++state.failures;
  }
}

}  // namespace sluice::risk
