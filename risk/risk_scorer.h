#pragma once
// RiskScorer: fired signals -> points -> a 0..100 score with its top contributors. Anomaly
// scoring: every signal adds its weight, every rule whose conditions all hold adds its points,
// caller-supplied (Lua) signals add theirs; nothing is a verdict on its own.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "risk/risk_request.h"
#include "risk/signals.h"

namespace sluice::risk {

// The signals one request fired. `points` overrides the weight for this request (list hits carry
// the matching list's points); 0 means "use the configured weight".
struct SignalSet {
  uint64_t fired = 0;
  std::array<int16_t, kSignalCount> points{};

  void fire(Signal s, int pointsOverride = 0) {
    fired |= uint64_t{1} << static_cast<int>(s);
    points[static_cast<int>(s)] = static_cast<int16_t>(pointsOverride);
  }
  bool has(Signal s) const { return fired & (uint64_t{1} << static_cast<int>(s)); }
};

// A compiled rule: all signals in `mask` fired and the route class is in `routes` (bit per
// RouteClass; 0 = any) -> points.
struct CompiledRule {
  std::string name;
  uint64_t mask = 0;
  uint8_t routes = 0;
  int points = 0;
};

struct SignalContribution {
  std::string_view name;  // signal, rule or extra-signal name (valid with the policy/request)
  int points = 0;
};

constexpr int kMaxTopSignals = 8;

struct ScoreResult {
  int score = 0;  // clamped 0..100
  int raw = 0;    // unclamped sum
  std::array<SignalContribution, kMaxTopSignals> top{};
  int topCount = 0;
};

class RiskScorer {
 public:
  RiskScorer() { for (int i = 0; i < kSignalCount; ++i) weights_[i] = signalInfo(static_cast<Signal>(i)).defaultPoints; }
  RiskScorer(std::array<int, kSignalCount> weights, std::vector<CompiledRule> rules, int topN)
      : weights_(weights), rules_(std::move(rules)), topN_(topN) {}

  ScoreResult score(const SignalSet& signals, RouteClass route,
                    const std::vector<ExtraSignal>& extras) const;
  int weight(Signal s) const { return weights_[static_cast<int>(s)]; }
  const std::vector<CompiledRule>& rules() const { return rules_; }

 private:
  std::array<int, kSignalCount> weights_{};
  std::vector<CompiledRule> rules_;
  int topN_ = 5;
};

}  // namespace sluice::risk
