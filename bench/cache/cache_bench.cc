// Micro-cache cost (issue 9): what a hit, a key build and a store cost the request path.
//
//   build/bench/sluice-bench-cache                       # everything
//   build/bench/sluice-bench-cache --benchmark_filter=Hit
//
// Keys look like a storefront's item pages ("shop.example.com/items/<n>?color=red&size=m"),
// responses carry ~10 headers and a 2 KiB body. Time is a plain counter: the proxy passes the
// timestamp its loop already read.
#include <benchmark/benchmark.h>

#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"
#include "proxy/cache/cache_key.h"
#include "proxy/cache/micro_cache.h"

namespace sluice::cache {
namespace {

constexpr size_t kKeys = 10000;

HeaderMap responseHeaders() {
  HeaderMap h;
  h.add("Date", "Tue, 11 Nov 2025 00:00:00 GMT");
  h.add("Content-Type", "text/html; charset=utf-8");
  h.add("Cache-Control", "public, max-age=1");
  h.add("ETag", "\"5f3a-17c\"");
  h.add("X-Request-Id", "0123456789abcdef");
  h.add("Server", "storefront");
  h.add("Vary", "Accept-Encoding");
  h.add("X-Item", "42");
  return h;
}

struct Fixture {
  CacheKeySpec spec;
  std::vector<CacheKey> keys;
  MicroCache cache;
  CachedResponsePtr body;

  Fixture() : cache(params()) {
    spec.vary = {"accept-encoding"};
    spec.normalize();
    HeaderMap req;
    req.add("Accept-Encoding", "gzip");
    keys.resize(kKeys);
    for (size_t i = 0; i < kKeys; i++) {
      std::string target = "/items/" + std::to_string(i) + "?size=m&color=red";
      buildCacheKey(spec, CacheRequestView{"shop.example.com", target, &req}, &keys[i]);
      cache.store(keys[i], make(keys[i]), 0);
    }
  }
  static MicroCacheParams params() {
    MicroCacheParams p;
    p.capacity_bytes = size_t{256} << 20;
    return p;
  }
  static CachedResponsePtr make(const CacheKey& k) {
    return CachedResponse::make(200, responseHeaders(), std::string(2048, 'x'), 0, 3600 * kSeconds, 0, k.vary);
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// One hot key (the flash-sale item): every thread hits the same shard, lock and refcount.
void BM_HitHotKey(benchmark::State& state) {
  auto& f = fixture();
  const CacheKey& k = f.keys[42];
  Nanos now = 1;
  for (auto _ : state) {
    CacheLookup l = f.cache.lookup(k, now++);
    benchmark::DoNotOptimize(l.response.get());
  }
}
BENCHMARK(BM_HitHotKey)->Threads(1)->Threads(2)->UseRealTime()->Repetitions(5)->ReportAggregatesOnly(true);

// 10k live keys, each thread walking its own stride: spread over the shards.
void BM_HitManyKeys(benchmark::State& state) {
  auto& f = fixture();
  size_t i = static_cast<size_t>(state.thread_index()) * 7919;
  Nanos now = 1;
  for (auto _ : state) {
    CacheLookup l = f.cache.lookup(f.keys[i % kKeys], now++);
    benchmark::DoNotOptimize(l.response.get());
    i += 13;
  }
}
BENCHMARK(BM_HitManyKeys)->Threads(1)->Threads(2)->UseRealTime()->Repetitions(5)->ReportAggregatesOnly(true);

// What the request path pays per request before the lookup: building the key in place.
void BM_BuildKey(benchmark::State& state) {
  CacheKeySpec spec;
  spec.cookies = {"member"};
  spec.vary = {"accept-encoding"};
  spec.normalize();
  HeaderMap req;
  req.add("Host", "shop.example.com");
  req.add("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36");
  req.add("Accept-Encoding", "gzip, br");
  req.add("Cookie", "session=abcdef0123456789; member=77; theme=dark");
  CacheKey k;
  for (auto _ : state) {
    buildCacheKey(spec, CacheRequestView{"shop.example.com", "/items/42?size=m&color=red&_=1731283200", &req}, &k);
    benchmark::DoNotOptimize(k.hash);
  }
}
BENCHMARK(BM_BuildKey);

// Store (replace) of a prebuilt response: the leader's cost after the upstream answered.
void BM_Store(benchmark::State& state) {
  auto& f = fixture();
  std::vector<CachedResponsePtr> responses;
  for (size_t i = 0; i < 64; i++) responses.push_back(Fixture::make(f.keys[i]));
  size_t i = 0;
  for (auto _ : state) {
    f.cache.store(f.keys[i % 64], responses[i % 64], 0);
    i++;
  }
}
BENCHMARK(BM_Store);

// Store including building the immutable response (header copy + 2 KiB body).
void BM_MakeAndStore(benchmark::State& state) {
  auto& f = fixture();
  HeaderMap h = responseHeaders();
  size_t i = 0;
  for (auto _ : state) {
    const CacheKey& k = f.keys[i++ % kKeys];
    f.cache.store(k, CachedResponse::make(200, h, std::string(2048, 'x'), 0, 3600 * kSeconds, 0, k.vary), 0);
  }
}
BENCHMARK(BM_MakeAndStore);

// A cold key's leader: join, then publish to no waiters (the coalescing overhead on every miss).
void BM_JoinLeadPublish(benchmark::State& state) {
  auto& f = fixture();
  auto r = Fixture::make(f.keys[0]);
  size_t i = 0;
  for (auto _ : state) {
    JoinResult j = f.cache.coalescer().join(f.keys[i++ % kKeys], nullptr);
    j.lease.publish(r);
  }
}
BENCHMARK(BM_JoinLeadPublish);

}  // namespace
}  // namespace sluice::cache

BENCHMARK_MAIN();
