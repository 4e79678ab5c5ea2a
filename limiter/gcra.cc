#include "limiter/gcra.h"

#include <algorithm>
#include <limits>
#include <new>

namespace sluice::limiter {
namespace {

constexpr Nanos kMaxHorizon = Nanos{100} * 365 * 24 * 3600 * kSeconds;  // ~100 years

int64_t floorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

int64_t ceilDiv(int64_t a, int64_t b) { return -floorDiv(-a, b); }

}  // namespace

const char* GcraParams::validate() const {
  if (requests == 0) return "rate must be at least 1 request per period";
  if (period <= 0) return "rate period must be positive";
  if (static_cast<uint64_t>(period) < requests) return "rate above 1 request per nanosecond";
  const Nanos interval = period / static_cast<Nanos>(requests);
  if (static_cast<unsigned __int128>(burst + uint64_t{1}) * static_cast<uint64_t>(interval) >
      static_cast<uint64_t>(kMaxHorizon)) {
    return "burst times the request interval exceeds 100 years";
  }
  if (penaltyCap < 0 || penaltyCap > kMaxHorizon) return "penalty cap out of range";
  if (resolution == GcraResolution::kNginxMillis) {
    // nginx: rate = requests * 1000 / seconds, an integer in 1/1000 requests per second.
    const unsigned __int128 rateMilli =
        static_cast<unsigned __int128>(requests) * 1000 * kSeconds / static_cast<uint64_t>(period);
    if (rateMilli == 0) return "rate below 1 request per 1000 s cannot be expressed in nginx mode";
    if (rateMilli > (uint64_t{1} << 40)) return "rate too high for nginx mode";
    if ((uint64_t{burst} + 1) * 1000 > Gcra::kExcessMask) {
      return "burst above 16776 is not supported in nginx mode";
    }
  }
  return nullptr;
}

Gcra::Gcra(const GcraParams& params) : params_(params) {
  interval_ = std::max<Nanos>(1, params.period / static_cast<Nanos>(std::max<uint64_t>(1, params.requests)));
  tolerance_ = (static_cast<Nanos>(params.burst) + 1) * interval_;
  delayFree_ = params.nodelay ? std::numeric_limits<Nanos>::max()
                              : (static_cast<Nanos>(params.delay) + 1) * interval_;
  penaltyLimit_ = tolerance_ + params.penaltyCap;
  inverseInterval_ = 1.0 / static_cast<double>(interval_);
  rateMilli_ = static_cast<int64_t>(static_cast<unsigned __int128>(params.requests) * 1000 *
                                    kSeconds / static_cast<uint64_t>(std::max<Nanos>(1, params.period)));
  rateMilli_ = std::max<int64_t>(1, rateMilli_);
  burstMilli_ = static_cast<int64_t>(params.burst) * 1000;
  delayMilli_ = params.nodelay ? std::numeric_limits<int64_t>::max()
                               : static_cast<int64_t>(params.delay) * 1000;
  const int64_t penaltyMilli = static_cast<int64_t>(std::min<unsigned __int128>(
      static_cast<unsigned __int128>(params.penaltyCap / kMillis) * rateMilli_ / 1000,
      kExcessMask));
  maxExcess_ = std::min<int64_t>(static_cast<int64_t>(kExcessMask), burstMilli_ + penaltyMilli);
}

__attribute__((always_inline)) inline RateDecision Gcra::chargeInline(uint64_t& state, bool fresh,
                                                                      Nanos now, uint32_t cost) const {
  if (params_.resolution == GcraResolution::kNginxMillis) return chargeNginx(state, fresh, now, cost);
  return chargeNanos(state, fresh, now, cost);
}

RateDecision Gcra::charge(uint64_t& state, bool fresh, Nanos now, uint32_t cost) const {
  return chargeInline(state, fresh, now, cost);
}

RateDecision Gcra::peek(uint64_t state, bool fresh, Nanos now, uint32_t cost) const {
  RateDecision d = charge(state, fresh, now, cost);
  d.charged = false;
  return d;
}

// Inlined into charge() and take(): a limit phase makes several checks per request, and the
// decision is then built in place rather than returned through a temporary and copied.
__attribute__((always_inline)) inline RateDecision Gcra::chargeNanos(uint64_t& state, bool fresh,
                                                                     Nanos now, uint32_t cost) const {
  RateDecision d;
  d.limit = static_cast<int64_t>(params_.burst) + 1;
  const Nanos tat = fresh ? now : std::max(static_cast<Nanos>(state), now);
  if (cost > static_cast<uint64_t>(params_.burst) + 1) {
    // More than the bucket holds: can never pass. Not counted either: it is a config mismatch.
    d.verdict = Verdict::kReject;
    d.retryAfter = tolerance_;
    d.reset = tat - now;
    return d;
  }
  const Nanos newTat = tat + static_cast<Nanos>(cost) * interval_;
  const Nanos backlog = newTat - now;
  if (backlog > tolerance_) {
    d.verdict = Verdict::kReject;
    d.retryAfter = backlog - tolerance_;
    d.remaining = 0;
    d.reset = tat - now;
    if (params_.countRejected) {
      // Never lower an existing debt, never raise it past the cap.
      const Nanos capped = std::min(newTat, now + penaltyLimit_);
      if (capped > tat) {
        state = static_cast<uint64_t>(capped);
        d.charged = true;
        d.reset = capped - now;
      }
    }
    return d;
  }
  state = static_cast<uint64_t>(newTat);
  d.charged = true;
  d.reset = backlog;
  d.remaining = intervalsIn(tolerance_ - backlog);
  if (backlog > delayFree_) {
    d.verdict = Verdict::kDelay;
    d.delay = backlog - delayFree_;
  }
  return d;
}

int64_t Gcra::intervalsIn(Nanos x) const {
  int64_t q = static_cast<int64_t>(static_cast<double>(x) * inverseInterval_);
  if (q * interval_ > x) {
    --q;
  } else if ((q + 1) * interval_ <= x) {
    ++q;
  }
  return q;
}

int64_t Gcra::nginxElapsedMs(uint64_t state, int64_t nowMs) const {
  // Elapsed ms modulo 2^40 (34 years). Workers share one table but each stamps with its own
  // reading of the clock (a request's head time), so `now` may be a little behind the stored
  // `last`: that is no time at all, as nginx's `if (ms < 0) ms = 0`, not a 34-year drain.
  const uint64_t last = state >> kExcessBits;
  const uint64_t elapsed = (static_cast<uint64_t>(nowMs) - last) & kMillisMask;
  return elapsed > kMillisMask - kBehindMs ? 0 : static_cast<int64_t>(elapsed);
}

int64_t Gcra::nginxDrain(int64_t elapsedMs) const {
  // nginx: ctx->rate * ms / 1000, truncated. 128-bit so a gap of years cannot overflow.
  const __int128 drain = static_cast<__int128>(rateMilli_) * elapsedMs / 1000;
  return drain > (int64_t{1} << 50) ? (int64_t{1} << 50) : static_cast<int64_t>(drain);
}

RateDecision Gcra::chargeNginx(uint64_t& state, bool fresh, Nanos now, uint32_t cost) const {
  RateDecision d;
  d.limit = static_cast<int64_t>(params_.burst) + 1;
  const int64_t nowMs = floorDiv(now, kMillis);
  const uint64_t nowField = static_cast<uint64_t>(nowMs) & kMillisMask;
  int64_t ms = 0;
  int64_t excess;
  if (fresh) {
    // nginx creates the node with excess 0: the first request is free of excess.
    excess = (static_cast<int64_t>(cost) - 1) * 1000;
  } else {
    ms = nginxElapsedMs(state, nowMs);
    excess = static_cast<int64_t>(state & kExcessMask) - nginxDrain(ms) +
             static_cast<int64_t>(cost) * 1000;
    if (excess < 0) excess = 0;
  }
  // nginx moves `last` only when at least a millisecond passed, so sub-ms bursts keep draining
  // from the same point.
  const uint64_t lastField = (fresh || ms != 0) ? nowField : (state >> kExcessBits);
  if (excess > burstMilli_) {
    d.verdict = Verdict::kReject;
    const int64_t stored = fresh ? 0 : static_cast<int64_t>(state & kExcessMask);
    const int64_t needMs = ceilDiv((stored + static_cast<int64_t>(cost) * 1000 - burstMilli_) * 1000,
                                   rateMilli_);
    d.retryAfter = std::max<int64_t>(1, needMs - ms) * kMillis;
    d.reset = ceilDiv(excess * 1000, rateMilli_) * kMillis;
    if (params_.countRejected && static_cast<int64_t>(cost) * 1000 <= burstMilli_ + 1000) {
      // Our extension (nginx never counts rejections): keep the excess, capped.
      state = (lastField << kExcessBits) | static_cast<uint64_t>(std::min(excess, maxExcess_));
      d.charged = true;
    }
    return d;
  }
  state = (lastField << kExcessBits) | static_cast<uint64_t>(excess);
  d.charged = true;
  d.remaining = (burstMilli_ - excess) / 1000;
  d.reset = ceilDiv((excess + 1000) * 1000, rateMilli_) * kMillis;
  if (excess > delayMilli_) {
    const int64_t delayMs = (excess - delayMilli_) * 1000 / rateMilli_;
    if (delayMs > 0) {  // nginx passes at once when the delay truncates to 0 ms
      d.verdict = Verdict::kDelay;
      d.delay = delayMs * kMillis;
    }
  }
  return d;
}

bool Gcra::idle(uint64_t state, Nanos now) const { return debt(state, now) == 0; }

uint64_t Gcra::debt(uint64_t state, Nanos now) const {
  if (params_.resolution == GcraResolution::kNginxMillis) {
    // Lossless only when even the +1000 of the next request drains to 0, as for a fresh node.
    const int64_t ms = nginxElapsedMs(state, floorDiv(now, kMillis));
    const int64_t left = static_cast<int64_t>(state & kExcessMask) + 1000 - nginxDrain(ms);
    return left > 0 ? static_cast<uint64_t>(left) : 0;
  }
  return static_cast<Nanos>(state) > now ? static_cast<uint64_t>(static_cast<Nanos>(state) - now) : 0;
}

void Gcra::uncharge(uint64_t& state, uint32_t cost) const {
  if (params_.resolution == GcraResolution::kNginxMillis) {
    const int64_t excess = static_cast<int64_t>(state & kExcessMask) - static_cast<int64_t>(cost) * 1000;
    state = (state & ~kExcessMask) | static_cast<uint64_t>(std::max<int64_t>(0, excess));
    return;
  }
  state = static_cast<uint64_t>(static_cast<Nanos>(state) - static_cast<Nanos>(cost) * interval_);
}

GcraLimiter::GcraLimiter(const GcraParams& params, GcraTablePtr table)
    : gcra_(params), table_(std::move(table)) {}

GcraTablePtr GcraLimiter::reuseOrCreateTable(const GcraTablePtr& previous, const GcraParams& params,
                                             size_t memoryBytes) {
  if (previous && previous->resolution == params.resolution &&
      previous->entries.memoryBytes() == KeyTable<uint64_t, 128>::memoryFor(memoryBytes)) {
    return previous;
  }
  return std::make_shared<GcraTable>(memoryBytes, params.resolution);
}

RateDecision GcraLimiter::take(uint64_t key, Nanos now, uint32_t cost, ChargeReceipt* receipt) {
  RateDecision d;
  uint64_t before = 0;
  uint64_t after = 0;
  const TableResult result = table_->entries.apply(
      key, Lookup::kFindOrInsert, [&](const uint64_t& s) { return classify(s, now); },
      [&](uint64_t& s, bool inserted) {
        before = s;
        // Built in place (d is the caller's return slot): assigning from a temporary made GCC
        // write it to the stack in pieces and copy it with wider loads, which stall.
        new (&d) RateDecision(gcra_.chargeInline(s, inserted, now, cost));
        after = s;
        // A fresh key that was not charged leaves nothing worth remembering.
        return (inserted && !d.charged) ? EntryAction::kErase : EntryAction::kKeep;
      });
  if (receipt != nullptr) {
    *receipt = ChargeReceipt{};
    receipt->key = key;
    receipt->before[0] = before;
    receipt->after[0] = after;
    receipt->cost = cost;
    receipt->charged = d.charged;
    receipt->inserted = result == TableResult::kInserted;
  }
  return d;
}

void GcraLimiter::refund(const ChargeReceipt& receipt, Nanos now) {
  if (!receipt.charged) return;
  table_->entries.apply(
      receipt.key, Lookup::kFindOnly, [&](const uint64_t& s) { return classify(s, now); },
      [&](uint64_t& s, bool) {
        if (s == receipt.after[0]) {
          // Nobody charged the key since: put back exactly what was there.
          if (receipt.inserted) return EntryAction::kErase;
          s = receipt.before[0];
        } else {
          gcra_.uncharge(s, receipt.cost);
        }
        return EntryAction::kKeep;
      });
}

RateDecision GcraLimiter::peek(uint64_t key, Nanos now, uint32_t cost) const {
  RateDecision d;
  const bool found = table_->entries.read(key, [&](const uint64_t& s) { d = gcra_.peek(s, false, now, cost); });
  if (!found) d = gcra_.peek(0, true, now, cost);
  return d;
}

size_t GcraLimiter::activeKeys(Nanos now) const {
  return table_->entries.countIf([&](const uint64_t& s) { return !gcra_.idle(s, now); });
}

}  // namespace sluice::limiter
