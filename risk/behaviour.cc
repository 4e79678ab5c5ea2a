#include "risk/behaviour.h"

#include <algorithm>
#include <cmath>

#include "core/swar.h"

namespace sluice::risk {
namespace {

uint16_t itemFingerprint(uint64_t itemKey) {
  const uint16_t fp = static_cast<uint16_t>(itemKey >> 48);
  return fp == 0 ? 1 : fp;
}

bool within(uint32_t then, uint32_t nowTick, Nanos window) {
  return then != 0 && static_cast<Nanos>(since(then, nowTick)) * kSeconds <= window;
}

}  // namespace

BehaviourTracker::BehaviourTracker(size_t memoryPerKind) {
  for (auto& t : tables_) t = std::make_unique<Table>(memoryPerKind);
}

double BehaviourTracker::decayFactor(uint32_t elapsedSeconds, Nanos halfLife) {
  const auto exact = [&] {
    const double elapsed = static_cast<double>(elapsedSeconds) * kSeconds;
    return std::exp2(-elapsed / static_cast<double>(halfLife));
  };
  // A request decays two or three scores, mostly a few seconds old, under one half-life: the
  // factors are remembered per thread (exp2 was ~45 instructions a call). Same value as exact().
  constexpr uint32_t kMemo = 256;
  struct Memo {
    Nanos halfLife = 0;
    double factor[kMemo];
    bool known[kMemo];
  };
  thread_local Memo memo;
  if (elapsedSeconds >= kMemo) return exact();
  if (memo.halfLife != halfLife) {
    memo.halfLife = halfLife;
    std::fill(std::begin(memo.known), std::end(memo.known), false);
  }
  if (!memo.known[elapsedSeconds]) {
    memo.factor[elapsedSeconds] = exact();
    memo.known[elapsedSeconds] = true;
  }
  return memo.factor[elapsedSeconds];
}

float BehaviourTracker::decay(float score, uint32_t scoreAt, uint32_t nowTick, Nanos halfLife) {
  if (score <= 0 || scoreAt == 0 || nowTick <= scoreAt) return score;
  if (halfLife <= 0) return 0;
  return static_cast<float>(score * decayFactor(nowTick - scoreAt, halfLife));
}

namespace {
// The estimate depends only on how many of the 64 bits are set: computed once per count
// (six estimates per request made a log and an lround each).
struct SketchEstimates {
  uint16_t bySetBits[65];
  SketchEstimates() {
    for (int set = 0; set <= 64; ++set) {
      if (set <= 1) bySetBits[set] = static_cast<uint16_t>(set);
      else if (set >= 64) bySetBits[set] = 300;  // saturated: "a lot"
      else bySetBits[set] = static_cast<uint16_t>(std::lround(-64.0 * std::log((64.0 - set) / 64.0)));
    }
  }
};
const SketchEstimates kSketchEstimates;
}  // namespace

uint32_t BehaviourTracker::sketchEstimate(uint64_t sketch) {
  return kSketchEstimates.bySetBits[swar::popcount64(sketch)];
}

namespace {
// The peers' decaying count as of `tick`.
float remoteNow(const EntityState& s, uint32_t tick, uint32_t windowSecs) {
  if (s.remoteCount <= 0) return 0;
  const uint16_t age = since16(s.remoteAt, static_cast<uint16_t>(tick));
  return s.remoteCount * static_cast<float>(std::exp(-static_cast<double>(age) / windowSecs));
}
}  // namespace

BehaviourObservation BehaviourTracker::observe(const BehaviourEvent& ev, const BehaviourParams& p,
                                               double regularMaxCv, Nanos halfLife, Nanos now,
                                               const uint32_t* shareFloor) {
  BehaviourObservation out;
  const uint64_t nowMs = static_cast<uint64_t>(now < 0 ? 0 : now / kMillis) + 1;
  const uint32_t tick = secondsTick(now);
  const uint32_t windowSecs = static_cast<uint32_t>(std::max<Nanos>(p.rateWindow / kSeconds, 1));
  const uint64_t idleMs = static_cast<uint64_t>(p.idleAfter / kMillis);
  const double perWindow = 1.0 / windowSecs;
  const double maxCv2 = regularMaxCv * regularMaxCv;
  auto classify = [&](const EntityState& s) {
    return since(s.lastSeenMs, nowMs) > idleMs ? limiter::EntryStatus::kIdle : limiter::EntryStatus::kActive;
  };
  for (int k = 0; k < kEntityKinds; ++k) {
    if (ev.keys[k] == 0) continue;
    EntityObservation& o = out.entity[k];
    o.present = true;
    tables_[k]->apply(ev.keys[k], limiter::Lookup::kFindOrInsert, classify,
                      [&](EntityState& s, bool inserted) {
      if (!inserted && s.lastSeenMs != 0 && since(s.lastSeenMs, nowMs) > idleMs) s = EntityState{};
      // Inter-arrival gaps: only requests that are behaviour events (not assets) count.
      if (s.lastSeenMs != 0 && ev.route != RouteClass::kOther) {
        const uint64_t gap = since(s.lastSeenMs, nowMs);
        s.gapsMs[s.gapHead] = static_cast<uint16_t>(std::min<uint64_t>(gap, 65535));
        s.gapHead = static_cast<uint8_t>((s.gapHead + 1) & 7);
        if (s.gapCount < 8) ++s.gapCount;
      }
      if (ev.route != RouteClass::kOther || s.lastSeenMs == 0) s.lastSeenMs = nowMs;

      // Rate: two tumbling buckets weighted into a sliding estimate.
      if (s.windowStart == 0 || since(s.windowStart, tick) >= 2 * windowSecs) {
        s.prevWindowCount = 0;
        s.windowCount = 0;
        s.windowStart = tick;
      } else if (since(s.windowStart, tick) >= windowSecs) {
        s.prevWindowCount = s.windowCount;
        s.windowCount = 0;
        s.windowStart += windowSecs;
      }
      if (s.windowCount < 65535) ++s.windowCount;
      const double into = static_cast<double>(since(s.windowStart, tick)) * perWindow;
      o.rate = s.windowCount + static_cast<uint32_t>(s.prevWindowCount * (1.0 - into));
      // Peers' requests (cluster sharing): a count decaying with time constant W counts a fresh
      // request fully and holds rate * W at a steady rate, as the window count does.
      if (s.remoteCount > 0) o.rate += static_cast<uint32_t>(remoteNow(s, tick, windowSecs));
      if (shareFloor && shareFloor[k] && o.rate >= shareFloor[k]) {
        if (s.unreported < 255) ++s.unreported;
        if (s.unreported >= std::max<uint32_t>(1, shareFloor[k] / 8)) {
          o.shareCount = s.unreported;
          s.unreported = 0;
        }
      }

      if (s.gapCount >= p.regularMinSamples && s.gapCount > 1) {
        uint32_t sum = 0;
        uint64_t squares = 0;
        for (int i = 0; i < s.gapCount; ++i) {
          sum += s.gapsMs[i];
          squares += static_cast<uint64_t>(s.gapsMs[i]) * s.gapsMs[i];
        }
        // A mean under 1 ms is a burst (parallel fetches), not a rhythm.
        if (sum >= s.gapCount) {
          // CV < max  <=>  n*sum(g^2) - sum(g)^2 < max^2 * sum(g)^2: exact in integers up to
          // the comparison, and no division or square root on the data path.
          const uint64_t sum2 = static_cast<uint64_t>(sum) * sum;
          o.gapSamples = s.gapCount;
          o.gapSum = sum;
          o.gapSpread = s.gapCount * squares - sum2;
          o.regular = static_cast<double>(o.gapSpread) < maxCv2 * static_cast<double>(sum2);
        }
      }

      // Path sequence.
      switch (ev.route) {
        case RouteClass::kItemDetail: {
          s.lastPageView = tick;
          if (ev.itemKey != 0) {
            const uint16_t fp = itemFingerprint(ev.itemKey);
            int slot = 0;
            for (int i = 0; i < 4; ++i) {
              if (s.itemFp[i] == fp) { slot = i; break; }
              if (s.itemSeen[i] < s.itemSeen[slot]) slot = i;
            }
            s.itemFp[slot] = fp;
            s.itemSeen[slot] = tick;
          }
          break;
        }
        case RouteClass::kPageView:
          s.lastPageView = tick;
          break;
        case RouteClass::kApi:
          o.apiWithoutPage = !within(s.lastPageView, tick, p.pageViewWindow);
          break;
        case RouteClass::kCheckout: {
          bool viewed = false;
          const uint16_t fp = ev.itemKey ? itemFingerprint(ev.itemKey) : 0;
          for (int i = 0; i < 4; ++i) {
            if (!within(s.itemSeen[i], tick, p.itemViewWindow)) continue;
            if (fp == 0 || s.itemFp[i] == fp) viewed = true;
          }
          o.checkoutWithoutView = !viewed;
          break;
        }
        case RouteClass::kOther:
          break;
      }

      // Distinct related ids.
      if (s.sketchEpoch == 0 || static_cast<Nanos>(since(s.sketchEpoch, tick)) * kSeconds > p.distinctWindow) {
        s.sketchA = s.sketchB = 0;
        s.sketchEpoch = tick;
      }
      const uint64_t relA = k == 2 ? ev.keys[1] : ev.keys[2];  // member: devices; else members
      const uint64_t relB = k == 0 ? ev.keys[1] : ev.addressKey;
      if (relA) s.sketchA |= sketchBit(relA);
      if (relB) s.sketchB |= sketchBit(relB);
      o.distinctA = sketchEstimate(s.sketchA);
      o.distinctB = sketchEstimate(s.sketchB);
      if (o.shareCount) {
        o.sketchA = s.sketchA;
        o.sketchB = s.sketchB;
      }

      o.decayedScore = decay(s.score, s.scoreAt, tick, halfLife);
      o.ladder = s.ladder;
      return limiter::EntryAction::kKeep;
    });
  }
  return out;
}

namespace {

// explainDue()'s rule on a locked entity: due when the score or action differs from the last
// recorded, or `refresh` passed since; a due decision is marked as recorded.
bool markExplained(EntityState& s, const ExplainStamp& e, uint32_t nowTick) {
  const uint16_t tick = static_cast<uint16_t>(nowTick);
  const uint8_t stamp = static_cast<uint8_t>(std::clamp(e.score, 0, 254) + 1);
  const uint16_t refreshTicks = static_cast<uint16_t>(std::clamp<Nanos>(e.refresh / kSeconds, 1, 0x7fff));
  const bool due = s.explainedScore != stamp || s.explainedAction != e.action ||
                   since16(s.explainedAt, tick) >= refreshTicks;
  if (due) {
    s.explainedScore = stamp;
    s.explainedAction = e.action;
    s.explainedAt = tick;
  }
  return due;
}

}  // namespace

int BehaviourTracker::commit(EntityKind kind, uint64_t key, float score, const LadderState* ladder,
                             Nanos halfLife, Nanos now, int shareMinScore,
                             const ExplainStamp* explain, bool* explainDue) {
  const uint32_t tick = secondsTick(now);
  int shared = -1;
  if (explainDue) *explainDue = false;
  tables_[static_cast<int>(kind)]->apply(
      key, limiter::Lookup::kFindOnly, [](const EntityState&) { return limiter::EntryStatus::kActive; },
      [&](EntityState& s, bool) {
        const float decayed = decay(s.score, s.scoreAt, tick, halfLife);
        s.score = std::max(decayed, score);
        s.scoreAt = tick;
        if (ladder) s.ladder = *ladder;
        if (shareMinScore > 0) {
          // A band shared earlier that decayed two bands since no longer counts: climbing back
          // is news. (One band of slack, or a score sitting on a boundary would be re-told on
          // every request as it decays a hair below it and climbs back.)
          const uint8_t decayedBand = static_cast<uint8_t>(std::min(decayed, 100.f) / 10);
          if (decayedBand + 1 < s.sharedBand) s.sharedBand = static_cast<uint8_t>(decayedBand + 1);
          const uint8_t band = static_cast<uint8_t>(std::min(s.score, 100.f) / 10);
          if (s.score >= static_cast<float>(shareMinScore) && band > s.sharedBand) {
            s.sharedBand = band;
            shared = static_cast<int>(s.score);
          }
        }
        if (explain && explainDue) *explainDue = markExplained(s, *explain, tick);
        return limiter::EntryAction::kKeep;
      });
  return shared;
}

bool BehaviourTracker::explainDue(EntityKind kind, uint64_t key, int score, uint8_t action,
                                  Nanos refresh, Nanos now) {
  const ExplainStamp stamp{score, action, refresh};
  const uint32_t tick = secondsTick(now);
  bool due = false;
  tables_[static_cast<int>(kind)]->apply(
      key, limiter::Lookup::kFindOnly, [](const EntityState&) { return limiter::EntryStatus::kActive; },
      [&](EntityState& s, bool) {
        due = markExplained(s, stamp, tick);
        return limiter::EntryAction::kKeep;
      });
  return due;
}

void BehaviourTracker::merge(EntityKind kind, uint64_t key, float score, uint32_t ageSeconds,
                             const LadderState* ladder, Nanos halfLife, Nanos idleAfter,
                             Nanos now) {
  const uint32_t tick = secondsTick(now);
  const uint64_t nowMs = static_cast<uint64_t>(now < 0 ? 0 : now / kMillis) + 1;
  const uint64_t idleMs = static_cast<uint64_t>(idleAfter / kMillis);
  const float remote = decay(score, 1, 1 + ageSeconds, halfLife);
  // Unknown here: a record that is idle until this instance sees the entity itself (it is the
  // first evicted, and observe() starts its counters fresh while keeping the score and ladder).
  tables_[static_cast<int>(kind)]->apply(
      key, limiter::Lookup::kFindOrInsert,
      [](const EntityState& s) { return s.lastSeenMs == 0 ? limiter::EntryStatus::kIdle : limiter::EntryStatus::kActive; },
      [&](EntityState& s, bool inserted) {
        // An entity idle here is forgotten as observe() would, so the peer's score survives it.
        if (inserted || (s.lastSeenMs != 0 && since(s.lastSeenMs, nowMs) > idleMs)) s = EntityState{};
        const float local = decay(s.score, s.scoreAt, tick, halfLife);
        s.score = std::max(local, remote);
        s.scoreAt = tick;
        s.sharedBand = std::max(s.sharedBand, static_cast<uint8_t>(std::min(s.score, 100.f) / 10));
        if (ladder) s.ladder = *ladder;
        return limiter::EntryAction::kKeep;
      });
}

void BehaviourTracker::mergeCounts(EntityKind kind, uint64_t key, uint32_t count, uint64_t sketchA,
                                   uint64_t sketchB, const BehaviourParams& p, Nanos now) {
  const uint32_t tick = secondsTick(now);
  const uint32_t windowSecs = static_cast<uint32_t>(std::max<Nanos>(p.rateWindow / kSeconds, 1));
  const uint64_t nowMs = static_cast<uint64_t>(now < 0 ? 0 : now / kMillis) + 1;
  const uint64_t idleMs = static_cast<uint64_t>(p.idleAfter / kMillis);
  tables_[static_cast<int>(kind)]->apply(
      key, limiter::Lookup::kFindOrInsert,
      [](const EntityState& s) { return s.lastSeenMs == 0 ? limiter::EntryStatus::kIdle : limiter::EntryStatus::kActive; },
      [&](EntityState& s, bool inserted) {
        if (inserted || (s.lastSeenMs != 0 && since(s.lastSeenMs, nowMs) > idleMs)) s = EntityState{};
        s.remoteCount = remoteNow(s, tick, windowSecs) + static_cast<float>(count);
        s.remoteAt = static_cast<uint16_t>(tick);
        if (s.sketchEpoch == 0 || static_cast<Nanos>(since(s.sketchEpoch, tick)) * kSeconds > p.distinctWindow) {
          s.sketchA = s.sketchB = 0;
          s.sketchEpoch = tick;
        }
        s.sketchA |= sketchA;
        s.sketchB |= sketchB;
        return limiter::EntryAction::kKeep;
      });
}

bool BehaviourTracker::read(EntityKind kind, uint64_t key, EntityState* out) const {
  return tables_[static_cast<int>(kind)]->read(key, [&](const EntityState& s) { *out = s; });
}

}  // namespace sluice::risk
