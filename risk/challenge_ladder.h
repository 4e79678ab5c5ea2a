#pragma once
// ChallengeLadder: one route profile's map from score to action (allow / a challenge level /
// block), plus per-entity escalation so a client that ignores or fails a challenge meets a harder
// one, and a client that keeps failing ends at a fixed fallback instead of looping.
#include <cstdint>
#include <string>
#include <vector>

#include "core/clock.h"

namespace sluice::risk {

enum class RiskAction : uint8_t { kAllow, kChallenge, kBlock };
const char* riskActionName(RiskAction a);

// Per-entity escalation, stored inside the entity's behaviour state (bounded table).
struct LadderState {
  uint8_t escalation = 0;    // levels added on top of the score's level
  uint8_t attempts = 0;      // challenges issued since the last pass
  uint8_t pendingLevel = 0;  // level of the challenge issued and not yet answered (0 = none)
  uint8_t failures = 0;      // failed challenges since the last pass (saturating)
  uint32_t pendingSince = 0; // seconds tick when pendingLevel was issued
};

struct LadderStep {
  int minScore = 0;
  RiskAction action = RiskAction::kAllow;
  uint8_t level = 0;  // 1-based challenge level when action is kChallenge
};

struct LadderOutcome {
  RiskAction action = RiskAction::kAllow;
  uint8_t level = 0;                   // challenge level when action is kChallenge
  RiskAction wouldAction = RiskAction::kAllow;  // what a non-monitor profile would have done
  uint8_t wouldLevel = 0;
  bool escalated = false;         // an unanswered challenge raised the level on this request
  bool fallback = false;          // the attempt cap was reached
  bool satisfiedByToken = false;  // a pass token at or above the level let it through
  bool stateChanged = false;      // the caller must store `state` back
};

class ChallengeLadder {
 public:
  ChallengeLadder() = default;
  // `steps` sorted by minScore ascending; levels are 1..levelCount.
  ChallengeLadder(std::string profile, std::vector<LadderStep> steps, uint8_t levelCount,
                  bool monitor, uint8_t maxAttempts, RiskAction fallbackAction,
                  uint8_t fallbackLevel, Nanos unansweredAfter);

  // Decides for `score`; `tokenLevel` is the level of a valid pass token (0 = none). Updates
  // `state` (escalation, attempts, pending) unless the profile is in monitor mode.
  LadderOutcome decide(int score, uint8_t tokenLevel, LadderState& state, Nanos now) const;
  // Feedback from a challenge: a pass lowers the escalation and clears attempts; a failure
  // raises it.
  static void onResult(LadderState& state, bool passed, uint8_t levelCount);

  const std::string& profile() const { return profile_; }
  bool monitor() const { return monitor_; }
  const std::vector<LadderStep>& steps() const { return steps_; }

 private:
  std::string profile_;
  std::vector<LadderStep> steps_;
  uint8_t levelCount_ = 0;
  bool monitor_ = false;
  uint8_t maxAttempts_ = 4;
  RiskAction fallbackAction_ = RiskAction::kBlock;
  uint8_t fallbackLevel_ = 0;
  Nanos unansweredAfter_ = 120 * kSeconds;
};

// Seconds ticks for compact per-entity timestamps: never 0 for a valid time (0 means "never").
inline uint32_t secondsTick(Nanos now) {
  return static_cast<uint32_t>((now < 0 ? 0 : now) / kSeconds) + 1;
}

// Time from stamp `then` to `now`, in the stamp's unit. Workers share the entity tables but each
// reads the clock itself, so a stamp another worker wrote may be a little ahead of this `now`:
// that is no time elapsed, never an unsigned wrap to "ages ago" (which forgot a scalper's
// history, reset its rate window or escalated a challenge it had just been given).
inline uint32_t since(uint32_t then, uint32_t now) { return now > then ? now - then : 0; }
inline uint64_t since(uint64_t then, uint64_t now) { return now > then ? now - then : 0; }
// The same for 16-bit stamps (the low bits of a seconds tick, so they wrap every 18 hours): an
// age past half the range is a stamp a little ahead of `now`, also no time.
inline uint16_t since16(uint16_t then, uint16_t now) {
  const uint16_t age = static_cast<uint16_t>(now - then);
  return age < 0x8000 ? age : 0;
}

}  // namespace sluice::risk
