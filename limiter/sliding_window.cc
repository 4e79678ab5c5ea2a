#include "limiter/sliding_window.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace sluice::limiter {
namespace {

int64_t floorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

using i128 = __int128;

i128 ceilDiv128(i128 a, i128 b) { return a <= 0 ? 0 : (a + b - 1) / b; }

// floor(x / w) for 0 <= x without a 128-bit division (a libcall) on every check: estimate in
// double, then correct with exact multiplications.
int64_t windowsIn(i128 x, int64_t w) {
  int64_t q = static_cast<int64_t>(static_cast<double>(x) / static_cast<double>(w));
  while (q > 0 && static_cast<i128>(q) * w > x) --q;
  while (static_cast<i128>(q + 1) * w <= x) ++q;
  return q;
}

void pack(const SlidingWindowState& s, uint64_t out[2]) {
  static_assert(sizeof(SlidingWindowState) <= 2 * sizeof(uint64_t));
  out[0] = out[1] = 0;
  std::memcpy(out, &s, sizeof(s));
}
SlidingWindowState unpack(const uint64_t in[2]) {
  SlidingWindowState s;
  std::memcpy(static_cast<void*>(&s), in, sizeof(s));
  return s;
}
bool same(const SlidingWindowState& a, const SlidingWindowState& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

}  // namespace

const char* SlidingWindowParams::validate() const {
  if (window < kMillis) return "window must be at least 1ms";
  if (limit > 0xFFFFFFFFu) return "limit above 4294967295 requests per window";
  return nullptr;
}

void SlidingWindowCounter::roll(SlidingWindowState& s, bool fresh, int64_t windowNumber) const {
  const uint32_t now = static_cast<uint32_t>(windowNumber);
  if (fresh) {
    s = SlidingWindowState{now, 0, 0};
    return;
  }
  const uint32_t behind = now - s.window;  // mod 2^32
  if (behind == 0 || behind > 0x80000000u) return;  // same window (or a clock that went back)
  s.previous = behind == 1 ? s.current : 0;
  s.current = 0;
  s.window = now;
}

// Time into the state's current window (`number` is now's window, the state already rolled).
// A worker whose clock reading is a little behind another's may find the state already in the
// next window: then it is that window's start, where the previous count weighs fully, not the
// end of this one, where it weighs nothing (a double burst at the edge).
Nanos SlidingWindowCounter::elapsedIn(const SlidingWindowState& s, Nanos now, int64_t number) const {
  return s.window == static_cast<uint32_t>(number) ? now - number * params_.window : 0;
}

RateDecision SlidingWindowCounter::charge(SlidingWindowState& state, bool fresh, Nanos now,
                                          uint32_t cost) const {
  return chargeInline(state, fresh, now, cost);
}

// Inlined into take(), which builds the decision in place in its caller's RateDecision.
__attribute__((always_inline)) inline RateDecision SlidingWindowCounter::chargeInline(
    SlidingWindowState& state, bool fresh, Nanos now, uint32_t cost) const {
  const Nanos w = params_.window;
  const int64_t number = floorDiv(now, w);
  SlidingWindowState s = state;
  roll(s, fresh, number);
  const Nanos elapsed = elapsedIn(s, now, number);
  const i128 limitW = static_cast<i128>(params_.limit) * w;
  const i128 carried = static_cast<i128>(s.previous) * (w - elapsed);
  const i128 used = carried + (static_cast<i128>(s.current) + cost) * w;

  RateDecision d;
  d.limit = static_cast<int64_t>(params_.limit);
  d.reset = w - elapsed;
  if (used <= limitW) {
    s.current += cost;
    state = s;
    d.charged = true;
    d.remaining = windowsIn(limitW - used, w);
    return d;
  }
  d.verdict = Verdict::kReject;
  if (static_cast<uint64_t>(cost) > params_.limit) {
    d.retryAfter = 2 * w - elapsed;  // never passes; point past both windows
  } else if (static_cast<i128>(s.current) + cost <= params_.limit && s.previous > 0) {
    // Passes later in this window, once enough of the previous window has slid out:
    // previous * (w - elapsed - x) <= (limit - current - cost) * w.
    const i128 room = (static_cast<i128>(params_.limit) - s.current - cost) * w;
    const i128 x = ceilDiv128(carried - room, s.previous);
    d.retryAfter = static_cast<Nanos>(std::max<i128>(1, x));
  } else {
    // Only in the next window, where this window's count becomes the sliding-out part:
    // current * (w - y) + cost * w <= limit * w.
    const i128 room = (static_cast<i128>(params_.limit) - cost) * w;
    const i128 y = s.current == 0 ? 0
                                  : ceilDiv128(static_cast<i128>(s.current) * w - room, s.current);
    d.retryAfter = static_cast<Nanos>((w - elapsed) + y);
  }
  if (params_.countRejected) {
    const uint64_t counted = std::min<uint64_t>(0xFFFFFFFFu, uint64_t{s.current} + cost);
    s.current = static_cast<uint32_t>(counted);
    state = s;
    d.charged = true;
  }
  return d;
}

RateDecision SlidingWindowCounter::peek(SlidingWindowState state, bool fresh, Nanos now,
                                        uint32_t cost) const {
  RateDecision d = charge(state, fresh, now, cost);
  d.charged = false;
  return d;
}

bool SlidingWindowCounter::idle(const SlidingWindowState& state, Nanos now) const {
  const uint32_t number = static_cast<uint32_t>(floorDiv(now, params_.window));
  const uint32_t behind = number - state.window;
  if (behind >= 2 && behind <= 0x80000000u) return true;
  const bool later = behind >= 1 && behind <= 0x80000000u;
  return state.current == 0 && (later || state.previous == 0);
}

void SlidingWindowCounter::uncharge(SlidingWindowState& state, const SlidingWindowState& charged,
                                    uint32_t cost) const {
  if (state.window == charged.window) {
    state.current -= std::min(state.current, cost);
  } else if (state.window == charged.window + 1) {
    state.previous -= std::min(state.previous, cost);
  }
}

uint64_t SlidingWindowCounter::estimate(SlidingWindowState s, Nanos now) const {
  const Nanos w = params_.window;
  const int64_t number = floorDiv(now, w);
  roll(s, false, number);
  const Nanos elapsed = elapsedIn(s, now, number);
  const i128 used = static_cast<i128>(s.previous) * (w - elapsed) + static_cast<i128>(s.current) * w;
  return static_cast<uint64_t>(used / w);
}

SlidingWindowLimiter::SlidingWindowLimiter(const SlidingWindowParams& params,
                                           SlidingWindowTablePtr table)
    : counter_(params), table_(std::move(table)) {}

SlidingWindowTablePtr SlidingWindowLimiter::reuseOrCreateTable(const SlidingWindowTablePtr& previous,
                                                               Nanos previousWindow,
                                                               const SlidingWindowParams& params,
                                                               size_t memoryBytes) {
  if (previous && previousWindow == params.window &&
      previous->entries.memoryBytes() ==
          KeyTable<SlidingWindowState, 128>::memoryFor(memoryBytes)) {
    return previous;
  }
  return std::make_shared<SlidingWindowTable>(memoryBytes);
}

RateDecision SlidingWindowLimiter::take(uint64_t key, Nanos now, uint32_t cost,
                                        ChargeReceipt* receipt) {
  RateDecision d;
  SlidingWindowState before;
  SlidingWindowState after;
  const TableResult result = table_->entries.apply(
      key, Lookup::kFindOrInsert,
      [&](const SlidingWindowState& s) {
        return counter_.idle(s, now) ? EntryStatus::kIdle : EntryStatus::kActive;
      },
      [&](SlidingWindowState& s, bool inserted) {
        before = s;
        new (&d) RateDecision(counter_.chargeInline(s, inserted, now, cost));  // see GcraLimiter::take
        after = s;
        return (inserted && !d.charged) ? EntryAction::kErase : EntryAction::kKeep;
      });
  if (receipt != nullptr) {
    *receipt = ChargeReceipt{};
    receipt->key = key;
    pack(before, receipt->before);
    pack(after, receipt->after);
    receipt->cost = cost;
    receipt->charged = d.charged;
    receipt->inserted = result == TableResult::kInserted;
  }
  return d;
}

void SlidingWindowLimiter::refund(const ChargeReceipt& receipt, Nanos now) {
  if (!receipt.charged) return;
  const SlidingWindowState before = unpack(receipt.before);
  const SlidingWindowState after = unpack(receipt.after);
  table_->entries.apply(
      receipt.key, Lookup::kFindOnly,
      [&](const SlidingWindowState& s) {
        return counter_.idle(s, now) ? EntryStatus::kIdle : EntryStatus::kActive;
      },
      [&](SlidingWindowState& s, bool) {
        if (same(s, after)) {
          if (receipt.inserted) return EntryAction::kErase;
          s = before;
        } else {
          counter_.uncharge(s, after, receipt.cost);
        }
        return EntryAction::kKeep;
      });
}

RateDecision SlidingWindowLimiter::peek(uint64_t key, Nanos now, uint32_t cost) const {
  RateDecision d;
  const bool found = table_->entries.read(
      key, [&](const SlidingWindowState& s) { d = counter_.peek(s, false, now, cost); });
  if (!found) d = counter_.peek(SlidingWindowState{}, true, now, cost);
  return d;
}

size_t SlidingWindowLimiter::activeKeys(Nanos now) const {
  return table_->entries.countIf([&](const SlidingWindowState& s) { return !counter_.idle(s, now); });
}

}  // namespace sluice::limiter
