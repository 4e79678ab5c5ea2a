#pragma once
// Request coalescing: concurrent misses for one key send one request upstream.
//
// The first miss for a key (primary key + vary values) becomes the LEADER and fetches upstream;
// misses that arrive while it is in flight become WAITERS. The leader ends its flight exactly once:
//   publish(response)   -> every waiter gets kFilled with the same immutable response
//   releaseUncacheable() -> kUncacheable: the answer was private (Set-Cookie, no-store, ...), each
//                           waiter goes upstream itself; a private response is never shared
//   fail() / dropping the lease -> kFailed: each waiter serves stale if it may, else goes upstream
// So a leader that errors, times out or whose client vanishes can never leave waiters hanging:
// the FlightLease destructor releases them (the proxy keeps the lease in its Exchange).
//
// Contract for a CacheWaiter (the proxy's implementation lives with its connection):
//   - onFilled() is called at most once, on the LEADER's thread, in join order. It must be
//     short and must not call back into the Coalescer: copy the result into a post to the
//     waiter's own loop (Worker::post) and return. The posted handler must check that the
//     exchange still waits (it may have timed out meanwhile).
//   - cancel() (WaitTicket::cancel, or dropping the ticket) returns true when the waiter was
//     removed before delivery: it will never be called. It returns false when it was (or is
//     being) delivered: if a delivery is running on another thread, cancel() blocks until
//     onFilled has returned, so after cancel() returns nothing touches the waiter.
//   - waits are bounded by the proxy, not here: the waiter's timer (route `lock_timeout`) calls
//     cancel(); true -> go upstream yourself; false -> a result is already posted to your loop,
//     use it.
// The Coalescer never reads a clock and never owns a loop (no libuv here).
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "proxy/cache/cache_key.h"
#include "proxy/cache/cached_response.h"

namespace sluice::cache {

enum class FillOutcome : uint8_t {
  kFilled,       // response is set: serve it (X-Cache: COALESCED)
  kUncacheable,  // the leader's answer was not shareable: go upstream yourself
  kFailed,       // the leader failed or went away: serve stale if allowed, else go upstream yourself
};

struct FillResult {
  FillOutcome outcome = FillOutcome::kFailed;
  CachedResponsePtr response;  // set for kFilled only
};

class CacheWaiter {
 public:
  virtual ~CacheWaiter() = default;
  virtual void onFilled(const FillResult& result) = 0;
};

enum class JoinMode : uint8_t {
  kLeadOrWait,  // a cacheable GET miss
  kWaitOnly,    // HEAD / request no-store: wait for a GET in flight, never lead (kNoFlight if none)
  kLeadOnly,    // refreshing a stale entry: lead, or kBusy if someone already refreshes (serve stale)
};

enum class JoinRole : uint8_t {
  kLeader,    // fetch upstream, then end the flight through the lease
  kWaiter,    // onFilled will come (or cancel)
  kNoFlight,  // kWaitOnly and nobody leads, or a 64-bit key collision: go upstream yourself
  kBusy,      // kLeadOnly and somebody leads: serve what you have
};

class Coalescer;
struct Flight;
using FlightPtr = std::shared_ptr<Flight>;

// The leader's obligation to end its flight. Move-only; the destructor fails an unended flight.
class FlightLease {
 public:
  FlightLease() = default;
  FlightLease(FlightLease&& o) noexcept : owner_(o.owner_), flight_(std::move(o.flight_)) { o.owner_ = nullptr; }
  FlightLease& operator=(FlightLease&& o) noexcept;
  FlightLease(const FlightLease&) = delete;
  FlightLease& operator=(const FlightLease&) = delete;
  ~FlightLease() { fail(); }

  bool active() const { return flight_ != nullptr; }
  void publish(CachedResponsePtr response);
  void releaseUncacheable();
  void fail();

 private:
  friend class Coalescer;
  FlightLease(Coalescer* owner, FlightPtr flight) : owner_(owner), flight_(std::move(flight)) {}
  void end(FillOutcome outcome, CachedResponsePtr response);
  Coalescer* owner_ = nullptr;
  FlightPtr flight_;
};

// A waiter's place in a flight. Move-only; the destructor cancels.
class WaitTicket {
 public:
  WaitTicket() = default;
  WaitTicket(WaitTicket&& o) noexcept : flight_(std::move(o.flight_)), index_(o.index_), owner_(o.owner_) {}
  WaitTicket& operator=(WaitTicket&& o) noexcept;
  WaitTicket(const WaitTicket&) = delete;
  WaitTicket& operator=(const WaitTicket&) = delete;
  ~WaitTicket() { cancel(); }

  bool active() const { return flight_ != nullptr; }
  // True: removed before delivery, onFilled will never run. False: delivered (or nothing to
  // cancel); onFilled has returned by the time this does.
  bool cancel();

 private:
  friend class Coalescer;
  WaitTicket(FlightPtr flight, size_t index, Coalescer* owner)
      : flight_(std::move(flight)), index_(index), owner_(owner) {}
  FlightPtr flight_;
  size_t index_ = 0;
  Coalescer* owner_ = nullptr;
};

struct JoinResult {
  JoinRole role = JoinRole::kNoFlight;
  FlightLease lease;   // kLeader
  WaitTicket ticket;   // kWaiter
};

struct CoalescerStats {
  uint64_t leaders = 0;
  uint64_t waiters = 0;       // joins that waited
  uint64_t coalesced = 0;     // waiters served a leader's response (kFilled deliveries)
  uint64_t released = 0;      // kUncacheable + kFailed deliveries
  uint64_t cancelled = 0;     // cancels that removed a waiter before delivery
  uint64_t in_flight = 0;     // flights open now
};

class Coalescer {
 public:
  explicit Coalescer(uint32_t shards = 64);
  ~Coalescer();
  Coalescer(const Coalescer&) = delete;
  Coalescer& operator=(const Coalescer&) = delete;

  // `waiter` must outlive the ticket (or the ticket's cancel). Ignored unless the role is kWaiter.
  JoinResult join(const CacheKey& key, CacheWaiter* waiter, JoinMode mode = JoinMode::kLeadOrWait);

  CoalescerStats stats() const;

 private:
  friend class FlightLease;
  friend class WaitTicket;
  struct Shard {
    std::mutex mu;
    std::unordered_map<uint64_t, FlightPtr> flights;
  };
  Shard& shardFor(uint64_t h) { return shards_[h & shard_mask_]; }
  void end(const FlightPtr& flight, FillOutcome outcome, CachedResponsePtr response);

  std::unique_ptr<Shard[]> shards_;
  uint64_t shard_mask_;
  std::atomic<uint64_t> leaders_{0}, waiters_{0}, coalesced_{0}, released_{0}, cancelled_{0}, in_flight_{0};
};

// One flight. Internal, but declared here so tickets can hold it by shared_ptr.
struct Flight {
  std::string key;      // canonical + '\n' + vary: a 64-bit hash collision never merges flights
  uint64_t hash = 0;
  std::mutex mu;
  std::condition_variable delivered;
  std::vector<CacheWaiter*> waiters;  // nullptr = cancelled
  size_t next = 0;                    // waiters[0, next) are delivered or being delivered
  size_t delivering = SIZE_MAX;       // index in onFilled right now
  std::thread::id deliverer;
  bool ended = false;
};

}  // namespace sluice::cache
