#include "proxy/cache/micro_cache.h"

#include <algorithm>

namespace sluice::cache {
namespace {

uint32_t roundUpPow2(uint32_t n) {
  uint32_t p = 1;
  while (p < n && p < (1u << 16)) p <<= 1;
  return p;
}

// A std::list node plus an unordered_map node and bucket: what a key costs beyond its strings.
constexpr size_t kIndexOverhead = 3 * sizeof(void*) + 4 * sizeof(void*);

}  // namespace

const char* cacheStateName(CacheState s) {
  switch (s) {
    case CacheState::kFresh:
      return "HIT";
    case CacheState::kStale:
      return "STALE";
    case CacheState::kMiss:
      break;
  }
  return "MISS";
}

MicroCache::MicroCache(const MicroCacheParams& p)
    : shard_count_(roundUpPow2(p.shards == 0 ? 1 : p.shards)),
      shard_mask_(shard_count_ - 1),
      shard_capacity_(p.capacity_bytes / shard_count_),
      max_variants_(p.max_variants == 0 ? 1 : p.max_variants),
      shards_(std::make_unique<Shard[]>(shard_count_)),
      coalescer_(p.coalescer_shards) {}

MicroCache::~MicroCache() = default;

size_t MicroCache::nodeOverhead(const Node& n) {
  return sizeof(Node) + kIndexOverhead + n.canonical.capacity() +
         n.variants.capacity() * sizeof(CachedResponsePtr);
}

void MicroCache::dropNodeLocked(Shard& s, Lru::iterator it) {
  s.bytes -= it->bytes;
  s.entries -= it->variants.size();
  s.map.erase(it->hash);
  s.lru.erase(it);
}

void MicroCache::dropVariantLocked(Shard& s, Lru::iterator it, size_t v) {
  if (it->variants.size() == 1) {
    dropNodeLocked(s, it);
    return;
  }
  size_t b = it->variants[v]->bytes();
  it->variants.erase(it->variants.begin() + static_cast<ptrdiff_t>(v));
  it->bytes -= b;
  s.bytes -= b;
  s.entries--;
}

size_t MicroCache::findLocked(Shard& s, Lru::iterator it, const CacheKey& key, Nanos now) {
  auto& vs = it->variants;
  for (size_t v = 0; v < vs.size(); v++) {
    if (vs[v]->varyValues() != key.vary) continue;
    if (!vs[v]->isUsable(now)) {
      dropVariantLocked(s, it, v);
      s.expired++;
      return SIZE_MAX;
    }
    return v;
  }
  return SIZE_MAX;
}

CacheLookup MicroCache::lookup(const CacheKey& key, Nanos now) {
  Shard& s = shardFor(key.hash);
  CacheLookup r;
  std::lock_guard<std::mutex> lock(s.mu);
  auto m = s.map.find(key.hash);
  if (m == s.map.end() || m->second->canonical != key.canonical) {
    s.misses++;
    return r;
  }
  Lru::iterator it = m->second;
  size_t v = findLocked(s, it, key, now);
  if (v == SIZE_MAX) {
    s.misses++;
    return r;
  }
  if (it != s.lru.begin()) s.lru.splice(s.lru.begin(), s.lru, it);
  r.response = it->variants[v];
  if (r.response->isFresh(now)) {
    r.state = CacheState::kFresh;
    s.hits++;
  } else {
    r.state = CacheState::kStale;
    s.stale++;
  }
  return r;
}

CachedResponsePtr MicroCache::lookupStale(const CacheKey& key, Nanos now, Nanos max_age) {
  Shard& s = shardFor(key.hash);
  std::lock_guard<std::mutex> lock(s.mu);
  auto m = s.map.find(key.hash);
  if (m == s.map.end() || m->second->canonical != key.canonical) return nullptr;
  size_t v = findLocked(s, m->second, key, now);
  if (v == SIZE_MAX) return nullptr;
  const CachedResponsePtr& r = m->second->variants[v];
  if (max_age >= 0 && now - r->storedAt() > max_age) return nullptr;
  s.stale++;
  return r;
}

CacheAccess MicroCache::lookupOrJoin(const CacheKey& key, Nanos now, CacheWaiter* waiter, JoinMode mode) {
  CacheAccess a;
  a.lookup = lookup(key, now);
  if (a.lookup.state == CacheState::kFresh) return a;
  if (a.lookup.state == CacheState::kStale) {
    if (mode != JoinMode::kWaitOnly) a.join = coalescer_.join(key, nullptr, JoinMode::kLeadOnly);
    else a.join.role = JoinRole::kBusy;  // a HEAD never refreshes: serve the stale entry
    return a;
  }
  a.join = coalescer_.join(key, waiter, mode);
  if (a.join.role == JoinRole::kLeader) {
    // Double-check: the previous leader may have stored and ended its flight between our lookup
    // and our join. Not counted as a second miss.
    Shard& s = shardFor(key.hash);
    CachedResponsePtr fresh;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      auto m = s.map.find(key.hash);
      if (m != s.map.end() && m->second->canonical == key.canonical) {
        size_t v = findLocked(s, m->second, key, now);
        if (v != SIZE_MAX && m->second->variants[v]->isFresh(now)) {
          fresh = m->second->variants[v];
          s.misses--;
          s.hits++;
        }
      }
    }
    if (fresh != nullptr) {
      a.join.lease.publish(fresh);
      a.join.role = JoinRole::kNoFlight;
      a.lookup.response = std::move(fresh);
      a.lookup.state = CacheState::kFresh;
    }
  }
  return a;
}

bool MicroCache::store(const CacheKey& key, CachedResponsePtr response, Nanos now) {
  (void)now;  // expiry lives in the response; kept in the signature for symmetry with lookups
  if (response == nullptr) return false;
  Shard& s = shardFor(key.hash);
  std::lock_guard<std::mutex> lock(s.mu);
  if (response->bytes() > shard_capacity_) {
    s.refused++;
    return false;
  }
  auto m = s.map.find(key.hash);
  if (m != s.map.end() && m->second->canonical != key.canonical) {
    dropNodeLocked(s, m->second);  // 64-bit collision: the newer key takes the slot
    m = s.map.end();
  }
  Lru::iterator it;
  if (m == s.map.end()) {
    Node n;
    n.canonical = key.canonical;
    n.hash = key.hash;
    s.lru.push_front(std::move(n));
    it = s.lru.begin();
    s.map.emplace(key.hash, it);
  } else {
    it = m->second;
    if (it != s.lru.begin()) s.lru.splice(s.lru.begin(), s.lru, it);
    // The same vary values replace their variant; past the per-key cap the oldest variant goes.
    auto& vs = it->variants;
    for (size_t v = 0; v < vs.size(); v++) {
      if (vs[v]->varyValues() == response->varyValues()) {
        vs.erase(vs.begin() + static_cast<ptrdiff_t>(v));
        s.entries--;
        break;
      }
    }
    if (vs.size() >= max_variants_) {
      vs.erase(vs.begin());
      s.entries--;
      s.evictions++;
    }
  }
  it->variants.push_back(std::move(response));
  s.entries++;
  // Re-charge the node from scratch: key, vector capacity and every variant.
  size_t charged = nodeOverhead(*it);
  for (const auto& v : it->variants) charged += v->bytes();
  s.bytes = s.bytes - it->bytes + charged;
  it->bytes = charged;
  if (charged > shard_capacity_) {
    // Only possible with many large variants on one key: give up this key entirely.
    s.refused++;
    dropNodeLocked(s, it);
    return false;
  }
  // Evict from the cold end until the shard is back under its share; the node just filled is at
  // the front and fits alone, so this ends before reaching it.
  while (s.bytes > shard_capacity_) {
    auto victim = std::prev(s.lru.end());
    if (victim == it) break;
    s.evictions += victim->variants.size();
    dropNodeLocked(s, victim);
  }
  s.stores++;
  return true;
}

size_t MicroCache::purge(std::string_view canonical) {
  uint64_t h = cacheKeyHash(canonical);
  Shard& s = shardFor(h);
  std::lock_guard<std::mutex> lock(s.mu);
  auto m = s.map.find(h);
  if (m == s.map.end() || m->second->canonical != canonical) return 0;
  size_t n = m->second->variants.size();
  dropNodeLocked(s, m->second);
  s.purged += n;
  return n;
}

size_t MicroCache::purgePrefix(std::string_view prefix) {
  size_t total = 0;
  for (uint32_t i = 0; i < shard_count_; i++) {
    Shard& s = shards_[i];
    std::lock_guard<std::mutex> lock(s.mu);
    for (auto it = s.lru.begin(); it != s.lru.end();) {
      auto next = std::next(it);
      if (std::string_view(it->canonical).substr(0, prefix.size()) == prefix) {
        size_t n = it->variants.size();
        dropNodeLocked(s, it);
        s.purged += n;
        total += n;
      }
      it = next;
    }
  }
  return total;
}

MicroCacheStats MicroCache::stats() const {
  MicroCacheStats r;
  for (uint32_t i = 0; i < shard_count_; i++) {
    Shard& s = shards_[i];
    std::lock_guard<std::mutex> lock(s.mu);
    r.hits += s.hits;
    r.misses += s.misses;
    r.stale += s.stale;
    r.stores += s.stores;
    r.refused += s.refused;
    r.evictions += s.evictions;
    r.expired += s.expired;
    r.purged += s.purged;
    r.bytes += s.bytes;
    r.entries += s.entries;
  }
  r.coalescing = coalescer_.stats();
  return r;
}

}  // namespace sluice::cache
