#include "risk/risk_scorer.h"

#include <algorithm>

#include "core/uninit_array.h"

namespace sluice::risk {

ScoreResult RiskScorer::score(const SignalSet& s, RouteClass route,
                              const std::vector<ExtraSignal>& extras) const {
  ScoreResult out;
  // Every contribution, on the stack: signals, then rules, then extras (bounded below). Left
  // uninitialised: zeroing all of it cost more than a request's few contributions (~190 Ir).
  constexpr int kMaxContribs = kSignalCount + 32;
  UninitArray<SignalContribution, kMaxContribs> storage;
  SignalContribution* const all = storage.data();
  int n = 0;
  int raw = 0;
  for (uint64_t m = s.fired; m != 0; m &= m - 1) {
    const int i = __builtin_ctzll(m);
    const int pts = s.points[i] != 0 ? s.points[i] : weights_[i];
    if (pts == 0) continue;  // weight 0 = signal switched off
    raw += pts;
    all[n++] = {signalInfo(static_cast<Signal>(i)).name, pts};
  }
  for (const auto& r : rules_) {
    if ((s.fired & r.mask) != r.mask) continue;
    if (r.routes != 0 && !(r.routes & (1u << static_cast<int>(route)))) continue;
    raw += r.points;
    if (n < kMaxContribs) all[n++] = {r.name, r.points};
  }
  for (const auto& e : extras) {
    raw += e.points;
    if (n < kMaxContribs) all[n++] = {e.name, e.points};
  }
  out.raw = raw;
  out.score = std::clamp(raw, 0, 100);
  const int k = std::min({n, topN_, kMaxTopSignals});
  std::partial_sort(all, all + k, all + n, [](const SignalContribution& a, const SignalContribution& b) {
    return a.points > b.points;
  });
  for (int i = 0; i < k; ++i) out.top[i] = all[i];
  out.topCount = k;
  return out;
}

}  // namespace sluice::risk
