#pragma once
// MicroCache: the process-wide store of cached responses, shared by every worker thread.
//
// Shape: N shards (a power of two, 16 by default), each a mutex, a hash map from the key's 64-bit
// hash to a node, and an exact LRU list of nodes. A node is one primary key (its canonical string
// is compared on every hit: a hash collision is a miss, never a wrong answer) holding up to
// `max_variants` responses, one per set of vary values. A lookup is one lock, one map probe, one
// string compare and a shared_ptr copy: the lock is held for tens of nanoseconds, and the bytes of
// the response are read after it is released.
//
// Bound: the byte budget is split evenly between shards and each shard evicts its least recently
// used nodes until a new entry fits, so the sum over shards never exceeds `capacity_bytes`. What is
// charged is CachedResponse::bytes() plus the node's key and bookkeeping. An entry larger than one
// shard's share is refused (count it as uncacheable; size `capacity_bytes` >= shards * 4 * the
// largest entry you want). A response evicted while a client is still being written keeps living
// through that client's pointer; it is no longer counted.
//
// Time is passed in (`now`, monotonic Nanos) and never read here. Expired entries (past their
// stale window) are dropped lazily by the lookup that finds them, or by LRU eviction.
//
// Hot-only routes: the store does not know about hotness. The proxy asks the limiter's
// HeavyHitterSketch (limiter/heavy_hitters.h: isHot(itemHash), lock-free) before it looks up or
// stores, and treats a cold item as RequestCacheability::kBypass. See docs/caching.md.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/clock.h"
#include "proxy/cache/cache_key.h"
#include "proxy/cache/cached_response.h"
#include "proxy/cache/coalescer.h"

namespace sluice::cache {

enum class CacheState : uint8_t {
  kMiss,
  kFresh,  // now < freshUntil
  kStale,  // freshUntil <= now < staleUntil: serve while refreshing or on upstream error
};

const char* cacheStateName(CacheState s);

struct CacheLookup {
  CachedResponsePtr response;  // null on kMiss
  CacheState state = CacheState::kMiss;
};

struct MicroCacheParams {
  size_t capacity_bytes = size_t{64} << 20;
  uint32_t shards = 16;         // rounded up to a power of two
  uint32_t max_variants = 8;    // responses per primary key (distinct vary values)
  uint32_t coalescer_shards = 64;
};

struct MicroCacheStats {
  uint64_t hits = 0;         // fresh lookups
  uint64_t misses = 0;
  uint64_t stale = 0;        // stale lookups + lookupStale answers (served stale, or could be)
  uint64_t stores = 0;
  uint64_t refused = 0;      // stores larger than a shard's share
  uint64_t evictions = 0;    // entries dropped for room (LRU)
  uint64_t expired = 0;      // entries dropped past their stale window
  uint64_t purged = 0;
  uint64_t bytes = 0;
  uint64_t entries = 0;      // responses (variants), not keys
  CoalescerStats coalescing; // coalesced = waiters served a leader's response
};

// What MicroCache::lookupOrJoin found and what the caller must do next.
struct CacheAccess {
  CacheLookup lookup;  // kFresh: serve it. kStale: see join.role. kMiss: see join.role
  JoinResult join;     // kLeader: fetch upstream, store, then lease.publish / release / fail
                       // kWaiter: wait for onFilled (bounded by your timer + ticket.cancel)
                       // kBusy:   (stale) someone refreshes: serve the stale entry
                       // kNoFlight: go upstream yourself (do not store unless the request is kCacheable)
};

class MicroCache {
 public:
  explicit MicroCache(const MicroCacheParams& params = MicroCacheParams());
  ~MicroCache();
  MicroCache(const MicroCache&) = delete;
  MicroCache& operator=(const MicroCache&) = delete;

  // Fresh or stale entry for this key and its vary values; an entry past its stale window is
  // dropped and reported as a miss.
  CacheLookup lookup(const CacheKey& key, Nanos now);

  // Serve-stale on upstream error, open circuit or limiter degrade: the entry if it is still
  // within its stale window (fresh ones too), and, when `max_age` >= 0, stored no longer than
  // `max_age` ago (the degrade rule's TTL). Counts as `stale` when it answers.
  CachedResponsePtr lookupStale(const CacheKey& key, Nanos now, Nanos max_age = -1);

  // The one call the request path makes for a cacheable (or lookup-only) request:
  //   fresh -> serve; stale -> try to lead a refresh (kLeadOnly) unless mode is kWaitOnly;
  //   miss  -> join in `mode`. A new leader re-checks the store once, so a leader that stored and
  //   published between our lookup and our join costs no second upstream request.
  CacheAccess lookupOrJoin(const CacheKey& key, Nanos now, CacheWaiter* waiter,
                           JoinMode mode = JoinMode::kLeadOrWait);

  // Stores (or replaces the same-vary variant of) the entry; evicts LRU entries of its shard to
  // make room. False when the entry can never fit a shard.
  bool store(const CacheKey& key, CachedResponsePtr response, Nanos now);

  // Purge every variant of one canonical key; how many responses went.
  size_t purge(std::string_view canonical);
  // Purge every key whose canonical string starts with `prefix` (walks every shard). "" = all.
  size_t purgePrefix(std::string_view prefix);

  MicroCacheStats stats() const;
  size_t capacityBytes() const { return shard_capacity_ * shard_count_; }
  Coalescer& coalescer() { return coalescer_; }

 private:
  struct Node {
    std::string canonical;
    uint64_t hash = 0;
    std::vector<CachedResponsePtr> variants;  // most recently stored last
    size_t bytes = 0;                         // charged: node + key + every variant
  };
  using Lru = std::list<Node>;  // front = most recently used
  struct alignas(64) Shard {
    std::mutex mu;
    Lru lru;
    std::unordered_map<uint64_t, Lru::iterator> map;
    size_t bytes = 0;
    size_t entries = 0;
    uint64_t hits = 0, misses = 0, stale = 0, stores = 0, refused = 0, evictions = 0, expired = 0,
             purged = 0;
  };

  Shard& shardFor(uint64_t hash) { return shards_[(hash >> 40) & shard_mask_]; }
  static size_t nodeOverhead(const Node& n);
  void dropNodeLocked(Shard& s, Lru::iterator it);
  void dropVariantLocked(Shard& s, Lru::iterator it, size_t v);
  // The variant for these vary values, or npos; drops it (and maybe the node) if it expired.
  size_t findLocked(Shard& s, Lru::iterator it, const CacheKey& key, Nanos now);

  const uint32_t shard_count_;
  const uint64_t shard_mask_;
  const size_t shard_capacity_;
  const uint32_t max_variants_;
  std::unique_ptr<Shard[]> shards_;
  Coalescer coalescer_;
};

}  // namespace sluice::cache
