#include "proxy/cache/micro_cache.h"

#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

namespace sluice::cache {
namespace {

constexpr Nanos kMs = kMillis;

CacheKey keyOf(std::string_view target, std::string vary = "") {
  CacheKeySpec spec;
  CacheKey k;
  HeaderMap none;
  buildCacheKey(spec, CacheRequestView{"shop", target, &none}, &k);
  k.vary = std::move(vary);
  return k;
}

CachedResponsePtr response(std::string body, Nanos stored_at, Nanos fresh_for, Nanos stale_for = 0,
                           std::string vary = "") {
  HeaderMap h;
  h.add("Content-Type", "text/plain");
  return CachedResponse::make(200, h, std::move(body), stored_at, fresh_for, stale_for, std::move(vary));
}

TEST_CASE("cached response: hop-by-hop and framing fields are dropped, the rest keep order", "[cache]") {
  HeaderMap h;
  h.add("Date", "x");
  h.add("Connection", "keep-alive, X-Hop");
  h.add("X-Hop", "1");
  h.add("Transfer-Encoding", "chunked");
  h.add("Content-Length", "5");
  h.add("Keep-Alive", "timeout=5");
  h.add("Set-Cookie", "a=1");
  h.add("ETag", "\"v1\"");
  auto r = CachedResponse::make(200, h, "hello", 100, 10, 5, "v");
  REQUIRE(r->headers().size() == 3);
  CHECK(r->headers().name(0) == "Date");
  CHECK(r->headers().name(1) == "Set-Cookie");
  CHECK(r->headers().name(2) == "ETag");
  CHECK(r->hasSetCookie());
  CHECK(r->body() == "hello");
  CHECK(r->storedAt() == 100);
  CHECK(r->freshUntil() == 110);
  CHECK(r->staleUntil() == 115);
  CHECK(r->bytes() >= sizeof(CachedResponse) + 5 + r->headers().bytes());
  CHECK(r->ageSeconds(100 + 2500 * kMs) == 2);
}

TEST_CASE("micro cache: fresh, stale and expired boundaries with injected time", "[cache]") {
  MicroCache cache;
  auto k = keyOf("/items/1");
  CHECK(cache.lookup(k, 0).state == CacheState::kMiss);
  REQUIRE(cache.store(k, response("v1", 1000, 1000 * kMs, 500 * kMs), 1000));
  CHECK(cache.lookup(k, 1000).state == CacheState::kFresh);
  CHECK(cache.lookup(k, 1000 + 1000 * kMs - 1).state == CacheState::kFresh);
  CHECK(cache.lookup(k, 1000 + 1000 * kMs).state == CacheState::kStale);
  CHECK(cache.lookup(k, 1000 + 1500 * kMs - 1).state == CacheState::kStale);
  CHECK(cache.lookupStale(k, 1000 + 1500 * kMs - 1) != nullptr);
  // Past max-stale: dropped lazily, a miss, and gone for lookupStale too.
  CHECK(cache.lookup(k, 1000 + 1500 * kMs).state == CacheState::kMiss);
  CHECK(cache.lookupStale(k, 1000 + 1500 * kMs) == nullptr);
  auto s = cache.stats();
  CHECK(s.entries == 0);
  CHECK(s.bytes == 0);
  CHECK(s.expired == 1);
  CHECK(s.hits == 2);
  CHECK(s.stale == 3);
  CHECK(s.misses == 2);
}

TEST_CASE("micro cache: lookupStale with the degrade rule's own TTL", "[cache]") {
  MicroCache cache;
  auto k = keyOf("/price/9");
  cache.store(k, response("p", 0, 1 * kSeconds, 60 * kSeconds), 0);
  CHECK(cache.lookupStale(k, 5 * kSeconds) != nullptr);
  CHECK(cache.lookupStale(k, 5 * kSeconds, 5 * kSeconds) != nullptr);
  CHECK(cache.lookupStale(k, 5 * kSeconds, 5 * kSeconds - 1) == nullptr);
  CHECK(cache.lookupStale(k, 0) != nullptr);  // a fresh entry serves too
  CHECK(cache.lookupStale(keyOf("/price/8"), 0) == nullptr);
}

TEST_CASE("micro cache: Vary values must match, variants are bounded per key", "[cache]") {
  MicroCacheParams p;
  p.max_variants = 2;
  MicroCache cache(p);
  auto gz = keyOf("/p", "accept-encoding=gzip\n");
  auto br = keyOf("/p", "accept-encoding=br\n");
  auto id = keyOf("/p", "accept-encoding\n");
  cache.store(gz, response("GZ", 0, kSeconds, 0, gz.vary), 0);
  CHECK(cache.lookup(br, 1).state == CacheState::kMiss);
  cache.store(br, response("BR", 0, kSeconds, 0, br.vary), 0);
  CHECK(cache.lookup(gz, 1).response->body() == "GZ");
  CHECK(cache.lookup(br, 1).response->body() == "BR");
  cache.store(id, response("ID", 0, kSeconds, 0, id.vary), 0);  // third variant evicts the oldest
  CHECK(cache.lookup(gz, 1).state == CacheState::kMiss);
  CHECK(cache.lookup(br, 1).response->body() == "BR");
  CHECK(cache.lookup(id, 1).response->body() == "ID");
  // Replacing a variant keeps one entry for it.
  cache.store(br, response("BR2", 0, kSeconds, 0, br.vary), 0);
  CHECK(cache.lookup(br, 1).response->body() == "BR2");
  CHECK(cache.stats().entries == 2);
  CHECK(cache.purge(gz.canonical) == 2);  // purging the key purges every variant
  CHECK(cache.stats().entries == 0);
  CHECK(cache.stats().bytes == 0);
}

TEST_CASE("micro cache: a hash collision is a miss, never another key's response", "[cache]") {
  MicroCache cache;
  auto a = keyOf("/a");
  auto b = keyOf("/b");
  b.hash = a.hash;  // forge a collision
  cache.store(a, response("A", 0, kSeconds), 0);
  CHECK(cache.lookup(b, 1).state == CacheState::kMiss);
  CHECK(cache.lookupStale(b, 1) == nullptr);
  cache.store(b, response("B", 0, kSeconds), 0);  // the newer key takes the slot
  CHECK(cache.lookup(b, 1).response->body() == "B");
  CHECK(cache.lookup(a, 1).state == CacheState::kMiss);
}

TEST_CASE("micro cache: LRU eviction keeps recently used keys", "[cache]") {
  MicroCacheParams p;
  p.shards = 1;
  p.capacity_bytes = 64 * 1024;
  MicroCache cache(p);
  std::string body(4000, 'x');
  auto first = keyOf("/keep");
  cache.store(first, response(body, 0, kSeconds), 0);
  for (int i = 0; i < 100; i++) {
    cache.lookup(first, 1);  // keep touching it
    cache.store(keyOf("/k" + std::to_string(i)), response(body, 0, kSeconds), 0);
  }
  CHECK(cache.lookup(first, 2).state == CacheState::kFresh);
  CHECK(cache.lookup(keyOf("/k99"), 2).state == CacheState::kFresh);
  CHECK(cache.lookup(keyOf("/k0"), 2).state == CacheState::kMiss);
  auto s = cache.stats();
  CHECK(s.evictions > 0);
  CHECK(s.bytes <= p.capacity_bytes);
}

TEST_CASE("micro cache: bytes never exceed the bound under a flood of keys", "[cache]") {
  MicroCacheParams p;
  p.shards = 16;
  p.capacity_bytes = 1 << 20;
  MicroCache cache(p);
  size_t max_seen = 0;
  for (int i = 0; i < 20000; i++) {
    std::string body(static_cast<size_t>(100 + (i * 7919) % 9000), 'b');
    cache.store(keyOf("/flood/" + std::to_string(i)), response(std::move(body), 0, kSeconds), 0);
    if (i % 97 == 0) {
      auto s = cache.stats();
      max_seen = std::max<size_t>(max_seen, s.bytes);
      REQUIRE(s.bytes <= p.capacity_bytes);
    }
  }
  auto s = cache.stats();
  CHECK(s.bytes <= p.capacity_bytes);
  CHECK(s.bytes > p.capacity_bytes / 2);  // and it is actually used
  CHECK(s.evictions > 0);
  CHECK(s.stores == 20000);
  CHECK(cache.capacityBytes() <= p.capacity_bytes);
}

TEST_CASE("micro cache: an entry larger than a shard's share is refused", "[cache]") {
  MicroCacheParams p;
  p.shards = 4;
  p.capacity_bytes = 4 * 10000;
  MicroCache cache(p);
  CHECK_FALSE(cache.store(keyOf("/big"), response(std::string(20000, 'x'), 0, kSeconds), 0));
  CHECK(cache.stats().refused == 1);
  CHECK(cache.stats().bytes == 0);
  CHECK(cache.store(keyOf("/small"), response(std::string(1000, 'x'), 0, kSeconds), 0));
}

TEST_CASE("micro cache: purge by exact key and by prefix", "[cache]") {
  MicroCache cache;
  for (int i = 0; i < 50; i++) cache.store(keyOf("/items/" + std::to_string(i)), response("i", 0, kSeconds), 0);
  for (int i = 0; i < 20; i++) cache.store(keyOf("/price/" + std::to_string(i)), response("p", 0, kSeconds), 0);
  CHECK(cache.purge("shop/items/7") == 1);
  CHECK(cache.purge("shop/items/7") == 0);
  CHECK(cache.purge("shop/items/") == 0);  // exact means exact
  CHECK(cache.lookup(keyOf("/items/7"), 1).state == CacheState::kMiss);
  CHECK(cache.lookup(keyOf("/items/8"), 1).state == CacheState::kFresh);
  CHECK(cache.purgePrefix("shop/items/1") == 11);  // 1, 10..19
  CHECK(cache.purgePrefix("shop/items/") == 38);
  CHECK(cache.lookup(keyOf("/price/3"), 1).state == CacheState::kFresh);
  CHECK(cache.stats().entries == 20);
  CHECK(cache.purgePrefix("") == 20);
  CHECK(cache.stats().bytes == 0);
  CHECK(cache.stats().purged == 70);
}

TEST_CASE("micro cache: an evicted response stays valid for its reader", "[cache]") {
  MicroCacheParams p;
  p.shards = 1;
  p.capacity_bytes = 16 * 1024;
  MicroCache cache(p);
  cache.store(keyOf("/a"), response(std::string(5000, 'a'), 0, kSeconds), 0);
  CachedResponsePtr held = cache.lookup(keyOf("/a"), 1).response;
  for (int i = 0; i < 10; i++) cache.store(keyOf("/f" + std::to_string(i)), response(std::string(5000, 'f'), 0, kSeconds), 0);
  CHECK(cache.lookup(keyOf("/a"), 1).state == CacheState::kMiss);
  CHECK(held->body() == std::string(5000, 'a'));
}

TEST_CASE("micro cache: concurrent lookups and stores on many keys keep the bound", "[cache]") {
  MicroCacheParams p;
  p.shards = 8;
  p.capacity_bytes = 256 * 1024;
  MicroCache cache(p);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; t++) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5000; i++) {
        auto k = keyOf("/k/" + std::to_string((i * 31 + t) % 700));
        Nanos now = i * kMs;
        auto l = cache.lookup(k, now);
        if (l.state != CacheState::kFresh) cache.store(k, response(std::string(300, 'z'), now, 50 * kMs, 50 * kMs), now);
        if (i % 1000 == 0) cache.purgePrefix("shop/k/1");
      }
    });
  }
  for (auto& th : threads) th.join();
  auto s = cache.stats();
  CHECK(s.bytes <= p.capacity_bytes);
  CHECK(s.hits + s.misses + s.stale == 20000);
}

}  // namespace
}  // namespace sluice::cache
