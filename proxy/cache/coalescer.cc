#include "proxy/cache/coalescer.h"

#include "core/hash.h"

namespace sluice::cache {
namespace {

uint32_t roundUpPow2(uint32_t n) {
  uint32_t p = 1;
  while (p < n && p < (1u << 16)) p <<= 1;
  return p;
}

}  // namespace

FlightLease& FlightLease::operator=(FlightLease&& o) noexcept {
  if (this != &o) {
    fail();
    owner_ = o.owner_;
    flight_ = std::move(o.flight_);
    o.owner_ = nullptr;
  }
  return *this;
}

void FlightLease::publish(CachedResponsePtr response) {
  if (response == nullptr) {
    end(FillOutcome::kFailed, nullptr);
  } else {
    end(FillOutcome::kFilled, std::move(response));
  }
}
void FlightLease::releaseUncacheable() { end(FillOutcome::kUncacheable, nullptr); }
void FlightLease::fail() { end(FillOutcome::kFailed, nullptr); }

void FlightLease::end(FillOutcome outcome, CachedResponsePtr response) {
  if (flight_ == nullptr) return;
  FlightPtr f = std::move(flight_);
  flight_ = nullptr;
  owner_->end(f, outcome, std::move(response));
}

WaitTicket& WaitTicket::operator=(WaitTicket&& o) noexcept {
  if (this != &o) {
    cancel();
    flight_ = std::move(o.flight_);
    index_ = o.index_;
    owner_ = o.owner_;
  }
  return *this;
}

bool WaitTicket::cancel() {
  if (flight_ == nullptr) return false;
  FlightPtr f = std::move(flight_);
  flight_ = nullptr;
  std::unique_lock<std::mutex> lock(f->mu);
  if (index_ >= f->next) {
    // Not reached by the deliverer yet (or the flight has not ended): it will skip us.
    f->waiters[index_] = nullptr;
    lock.unlock();
    owner_->cancelled_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  // Being delivered right now on another thread: wait for onFilled to return, so the caller may
  // free the waiter as soon as we do. On the delivering thread itself (a waiter cancelling from
  // inside onFilled) waiting would deadlock, and the call is already on this stack anyway.
  if (f->delivering == index_ && f->deliverer != std::this_thread::get_id()) {
    f->delivered.wait(lock, [&] { return f->delivering != index_; });
  }
  return false;
}

Coalescer::Coalescer(uint32_t shards) {
  uint32_t n = roundUpPow2(shards == 0 ? 1 : shards);
  shards_ = std::make_unique<Shard[]>(n);
  shard_mask_ = n - 1;
}

Coalescer::~Coalescer() = default;

JoinResult Coalescer::join(const CacheKey& key, CacheWaiter* waiter, JoinMode mode) {
  // Requests with different vary values must never share a flight: mix them into the hash and
  // keep them in the compared key.
  uint64_t h = key.vary.empty() ? key.hash : hash64(key.vary, key.hash);
  Shard& shard = shardFor(mix64(h));
  JoinResult r;
  std::lock_guard<std::mutex> lock(shard.mu);
  auto it = shard.flights.find(h);
  if (it != shard.flights.end()) {
    const FlightPtr& f = it->second;
    bool same = f->key.size() == key.canonical.size() + 1 + key.vary.size() &&
                std::string_view(f->key).substr(0, key.canonical.size()) == key.canonical &&
                std::string_view(f->key).substr(key.canonical.size() + 1) == key.vary;
    if (!same) {
      r.role = JoinRole::kNoFlight;  // 64-bit collision: go upstream alone rather than merge
      return r;
    }
    if (mode == JoinMode::kLeadOnly) {
      r.role = JoinRole::kBusy;
      return r;
    }
    // A flight still in the map has not ended (end() erases it before delivering), so the
    // deliverer will see this waiter.
    size_t index;
    {
      std::lock_guard<std::mutex> flock(f->mu);
      index = f->waiters.size();
      f->waiters.push_back(waiter);
    }
    waiters_.fetch_add(1, std::memory_order_relaxed);
    r.role = JoinRole::kWaiter;
    r.ticket = WaitTicket(f, index, this);
    return r;
  }
  if (mode == JoinMode::kWaitOnly) {
    r.role = JoinRole::kNoFlight;
    return r;
  }
  auto f = std::make_shared<Flight>();
  f->key.reserve(key.canonical.size() + 1 + key.vary.size());
  f->key.append(key.canonical).push_back('\n');
  f->key.append(key.vary);
  f->hash = h;
  shard.flights.emplace(h, f);
  leaders_.fetch_add(1, std::memory_order_relaxed);
  in_flight_.fetch_add(1, std::memory_order_relaxed);
  r.role = JoinRole::kLeader;
  r.lease = FlightLease(this, std::move(f));
  return r;
}

void Coalescer::end(const FlightPtr& f, FillOutcome outcome, CachedResponsePtr response) {
  {
    // Unlist first: from here on a new miss starts a new flight (and normally finds the entry the
    // leader stored before publishing), and no one can join this one.
    Shard& shard = shardFor(mix64(f->hash));
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.flights.find(f->hash);
    if (it != shard.flights.end() && it->second == f) shard.flights.erase(it);
  }
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
  FillResult result{outcome, std::move(response)};
  uint64_t delivered = 0;
  std::unique_lock<std::mutex> lock(f->mu);
  f->ended = true;
  f->deliverer = std::this_thread::get_id();
  while (f->next < f->waiters.size()) {
    size_t i = f->next++;
    CacheWaiter* w = f->waiters[i];
    if (w == nullptr) continue;
    f->delivering = i;
    lock.unlock();
    w->onFilled(result);
    lock.lock();
    f->delivering = SIZE_MAX;
    f->delivered.notify_all();
    delivered++;
  }
  lock.unlock();
  if (outcome == FillOutcome::kFilled) {
    coalesced_.fetch_add(delivered, std::memory_order_relaxed);
  } else {
    released_.fetch_add(delivered, std::memory_order_relaxed);
  }
}

CoalescerStats Coalescer::stats() const {
  CoalescerStats s;
  s.leaders = leaders_.load(std::memory_order_relaxed);
  s.waiters = waiters_.load(std::memory_order_relaxed);
  s.coalesced = coalesced_.load(std::memory_order_relaxed);
  s.released = released_.load(std::memory_order_relaxed);
  s.cancelled = cancelled_.load(std::memory_order_relaxed);
  s.in_flight = in_flight_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace sluice::cache
