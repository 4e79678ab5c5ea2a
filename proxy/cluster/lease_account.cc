#include "proxy/cluster/lease_account.h"

#include <algorithm>

namespace sluice::cluster {

using limiter::RateDecision;
using limiter::Verdict;

namespace {
// ChargeReceipt::before[0]: where a charge came from, so refund() gives it back there.
constexpr uint64_t kFromLease = 1;
constexpr uint64_t kFromDebt = 2;
}  // namespace

void LeaseAccount::roll(Entry& e, Nanos now) {
  if (e.window_end == 0 || now < e.window_end) return;
  // A new window: the old lease expired in Redis too (lease_take keys by window index). Debt
  // is carried: credit handed out is always charged to some window's budget (a take that
  // landed in the old window just before it closed must not forgive credit given in the new).
  e.window_end = 0;
  e.lease = 0;
  e.exhausted = false;
}

int64_t LeaseAccount::chunkFor(const Entry& e) const {
  // Enough for about two sync intervals of this key's recent demand, so the next tick refills
  // before the lease is dry; never more than max_chunk (one worker must not hoard the budget).
  return std::clamp<int64_t>(2 * e.demand, 1, std::max<int64_t>(1, p_.max_chunk));
}

RateDecision LeaseAccount::take(uint64_t key, Nanos now, uint32_t cost, limiter::ChargeReceipt* receipt) {
  RateDecision d;
  d.limit = p_.limit;
  if (down_) {
    // The caller routes to the fallback while down; decide the same way if it did not.
    if (p_.fail_closed) {
      d.verdict = Verdict::kReject;
      d.retryAfter = kSeconds;
    }
    return d;
  }
  Entry& e = entries_[key];
  roll(e, now);
  auto allow = [&](uint64_t from) {
    e.demand += cost;
    d.charged = true;
    d.remaining = e.lease;
    d.reset = e.window_end > now ? e.window_end - now : p_.window;
    if (receipt) {
      *receipt = limiter::ChargeReceipt{};
      receipt->key = key;
      receipt->cost = cost;
      receipt->charged = true;
      receipt->before[0] = from;
    }
    return d;
  };
  if (e.lease >= cost) {
    e.lease -= cost;
    if (e.lease == 0 && !e.exhausted) markUrgent(key, e);
    return allow(kFromLease);
  }
  if (!e.exhausted && e.debt + cost <= std::max<int64_t>(1, p_.max_chunk)) {
    // Dry: borrow while the take is on its way (asked for now, not at the next tick).
    e.debt += cost;
    stats_.credit++;
    markUrgent(key, e);
    return allow(kFromDebt);
  }
  d.verdict = Verdict::kReject;
  d.remaining = 0;
  // Exhausted: the budget returns with the next window; dry with credit spent: the next grant.
  d.retryAfter = e.exhausted && e.window_end > now ? e.window_end - now : p_.sync_interval;
  d.reset = e.window_end > now ? e.window_end - now : p_.window;
  if (!e.exhausted) markUrgent(key, e);
  return d;
}

void LeaseAccount::refund(const limiter::ChargeReceipt& r, Nanos now) {
  if (!r.charged) return;
  auto it = entries_.find(r.key);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  roll(e, now);
  e.demand = std::max<int64_t>(0, e.demand - r.cost);
  if (r.before[0] == kFromDebt && e.debt >= r.cost) e.debt -= r.cost;
  else e.lease += r.cost;  // back into the lease (an expired window's lease is gone anyway)
}

RateDecision LeaseAccount::peek(uint64_t key, Nanos now, uint32_t cost) const {
  RateDecision d;
  d.limit = p_.limit;
  auto it = entries_.find(key);
  if (it == entries_.end()) return d;
  const Entry& e = it->second;
  bool live = e.window_end == 0 || now < e.window_end;
  d.remaining = live ? e.lease : 0;
  if (live && e.exhausted && e.lease < cost) {
    d.verdict = Verdict::kReject;
    d.retryAfter = e.window_end - now;
  }
  return d;
}

void LeaseAccount::markUrgent(uint64_t key, Entry& e) {
  if (e.urgent || e.in_flight) return;
  e.urgent = true;
  urgent_keys_.push_back(key);
}

void LeaseAccount::send(uint64_t key, Entry& e, std::vector<LeaseTake>* out) {
  int64_t chunk = chunkFor(e);
  e.last_chunk = chunk;
  e.demand = 0;
  e.in_flight = true;
  out->push_back({key, e.debt + chunk});
  stats_.takes++;
}

void LeaseAccount::collect(Nanos now, bool tick, std::vector<LeaseTake>* out) {
  if (down_) return;
  // Dry leases first (asked for on the next loop turn, batched with whatever else is dry).
  for (uint64_t key : urgent_keys_) {
    auto it = entries_.find(key);
    if (it == entries_.end()) continue;
    Entry& e = it->second;
    e.urgent = false;
    roll(e, now);
    if (e.in_flight || e.exhausted) continue;
    send(key, e, out);
  }
  urgent_keys_.clear();
  if (!tick) return;
  // The tick: refill leases below half their last chunk that are still in demand.
  for (auto& [key, e] : entries_) {
    roll(e, now);
    if (e.in_flight || e.exhausted || e.demand == 0 || e.lease * 2 >= e.last_chunk) continue;
    send(key, e, out);
  }
}

void LeaseAccount::applyGrant(const LeaseTake& t, int64_t granted, int64_t window_end_ms,
                              int64_t redis_now_ms, Nanos now, int64_t used) {
  down_ = false;
  auto it = entries_.find(t.key);
  if (it == entries_.end()) return;
  Entry& e = it->second;
  e.in_flight = false;
  stats_.granted += static_cast<uint64_t>(std::max<int64_t>(0, granted));
  Nanos end = now + std::max<int64_t>(0, window_end_ms - redis_now_ms) * kMillis;
  roll(e, now);
  if (end <= now) return;  // the window it was granted in is over here already
  if (e.window_end != 0 && end + p_.window / 2 < e.window_end) return;  // a stale window's grant
  if (e.window_end == 0 || end > e.window_end + p_.window / 2) {
    // The grant opens a window we had not seen: start it clean (debt was borrowed within it).
    e.window_end = end;
    e.exhausted = false;
  }
  int64_t repay = std::min(granted, e.debt);
  e.debt -= repay;
  e.lease += granted - repay;
  if (granted < t.want || (used >= 0 && used >= p_.limit)) {
    // The window's budget is gone: refuse until it ends. Unpaid credit stays as debt and is
    // charged to the next window (so over several windows the budget holds exactly; within
    // one, the overshoot is at most the credit cap per worker).
    e.exhausted = true;
    stats_.exhausted++;
  }
}

void LeaseAccount::applyFailure(const LeaseTake& t) {
  stats_.failures++;
  auto it = entries_.find(t.key);
  if (it != entries_.end()) it->second.in_flight = false;
  setDown(true);
}

void LeaseAccount::setDown(bool down) {
  if (down == down_) return;
  down_ = down;
  if (down) {
    // Leases restart from zero when Redis is back: nothing spent on the fallback is reported.
    for (auto& [key, e] : entries_) e = Entry{};
    urgent_keys_.clear();
  }
}

size_t LeaseAccount::sweep(Nanos now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    const Entry& e = it->second;
    // A key quiet for a whole window after its own is forgotten, unpaid credit included
    // (at most the credit cap, once per key).
    bool idle = !e.in_flight && !e.urgent &&
                (e.window_end == 0 ? e.lease == 0 && e.debt == 0 : now >= e.window_end + p_.window);
    if (idle) it = entries_.erase(it);
    else ++it;
  }
  return entries_.size();
}

}  // namespace sluice::cluster
