// proxy/cluster/lease_account: lease-mode accounting of a cluster-scope limit with a hand-moved
// clock and hand-written lease_take replies (no Redis), and the `redis:` / cluster-scope /
// sale_gate config keys with their file:line errors.
#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "proxy/cluster/lease_account.h"
#include "proxy/config/config_loader.h"
#include "proxy/config/redis_settings.h"

namespace sluice {
namespace {

using cluster::LeaseAccount;
using cluster::LeaseParams;
using cluster::LeaseTake;
using limiter::Verdict;

// A fake Redis budget: lease_take semantics for one window of `limit` units.
struct FakeBudget {
  int64_t limit;
  int64_t used = 0;
  int64_t grant(int64_t want) {
    int64_t g = std::max<int64_t>(0, std::min(want, limit - used));
    used += g;
    return g;
  }
};

LeaseParams params(int64_t limit, int64_t chunk) {
  LeaseParams p;
  p.limit = limit;
  p.window = kSeconds;
  p.sync_interval = 50 * kMillis;
  p.max_chunk = chunk;
  return p;
}

// Answers every pending take from `budget`; the window ends `left_ms` after the Redis clock.
void answer(LeaseAccount& a, FakeBudget& budget, Nanos now, bool tick, int64_t left_ms = 1000) {
  std::vector<LeaseTake> takes;
  a.collect(now, tick, &takes);
  for (const auto& t : takes) {
    int64_t g = budget.grant(t.want);
    a.applyGrant(t, g, 10000 + left_ms, 10000, now, budget.used);
  }
}

TEST_CASE("lease: a new key borrows while its first take is in flight, then spends the lease", "[cluster]") {
  LeaseAccount a(params(100, 10));
  FakeBudget b{100};
  Nanos now = kSeconds;
  CHECK(a.take(7, now, 1, nullptr).verdict == Verdict::kAllow);  // credit
  CHECK(a.stats().credit == 1);
  CHECK(a.hasUrgent());
  answer(a, b, now, false);
  // Asked debt (1) + chunk (2 x demand 1 = 2): the debt is repaid, 2 units left in the lease.
  CHECK(b.used == 3);
  CHECK(a.take(7, now, 1, nullptr).verdict == Verdict::kAllow);
  CHECK(a.take(7, now, 1, nullptr).verdict == Verdict::kAllow);
  CHECK(a.stats().credit == 1);  // both came from the lease
}

TEST_CASE("lease: never more than the global budget plus bounded credit, then refused until the window ends",
          "[cluster]") {
  // Two workers (instances) share 100 units per window; each answers its urgent takes at once
  // and refills at every tick, as the proxy does.
  FakeBudget b{100};
  LeaseAccount w1(params(100, 12)), w2(params(100, 12));
  Nanos now = kSeconds;
  int allowed = 0;
  for (int step = 0; step < 400; step++) {
    for (LeaseAccount* w : {&w1, &w2}) {
      if (w->take(42, now, 1, nullptr).verdict == Verdict::kAllow) allowed++;
      answer(*w, b, now, step % 10 == 0);
    }
    now += kMillis;  // 400 ms of a 1 s window, 2000 requests/s offered
  }
  CHECK(b.used == 100);
  // Everything granted was spent; credit taken while a take was in flight is bounded by the
  // chunk per worker, and with takes answered at once it is repaid.
  CHECK(allowed >= 100);
  CHECK(allowed <= 100 + 2 * 12);
  // Exhausted: refused locally, no more takes.
  uint64_t takes = w1.stats().takes + w2.stats().takes;
  auto d = w1.take(42, now, 1, nullptr);
  CHECK(d.verdict == Verdict::kReject);
  CHECK(d.retryAfter > 0);
  CHECK(d.retryAfter <= kSeconds);
  answer(w1, b, now, true);
  CHECK(w1.stats().takes + w2.stats().takes == takes);
  // The next window: a fresh budget.
  now += kSeconds;
  b = FakeBudget{100};
  CHECK(w1.take(42, now, 1, nullptr).verdict == Verdict::kAllow);
}

TEST_CASE("lease: a whole grant that empties the budget ends credit for the window", "[cluster]") {
  LeaseAccount a(params(10, 10));
  FakeBudget b{10};
  Nanos now = kSeconds;
  a.take(3, now, 1, nullptr);  // credit 1, then asks 1 + 2
  answer(a, b, now, false);
  b.used = 6;  // other instances took all but 4
  std::vector<LeaseTake> takes;
  a.take(3, now, 1, nullptr);
  a.take(3, now, 1, nullptr);  // lease spent: the next take asks 2 x demand 2 = 4
  a.collect(now, true, &takes);
  REQUIRE(takes.size() == 1);
  CHECK(takes[0].want == 4);
  int64_t g = b.grant(takes[0].want);
  a.applyGrant(takes[0], g, 11000, 10000, now, b.used);  // whole, and used == limit
  for (int i = 0; i < 4; i++) CHECK(a.take(3, now, 1, nullptr).verdict == Verdict::kAllow);
  // Nothing left anywhere: refused at once, no credit handed out, no take sent.
  CHECK(a.take(3, now, 1, nullptr).verdict == Verdict::kReject);
  CHECK(a.stats().credit == 1);
  takes.clear();
  a.collect(now, true, &takes);
  CHECK(takes.empty());
}

TEST_CASE("lease: round trips per request stay small at steady state", "[cluster]") {
  LeaseAccount a(params(1000000, 5000));
  FakeBudget b{1000000};
  Nanos now = kSeconds;
  int requests = 0;
  for (int ms = 0; ms < 500; ms++) {
    for (int i = 0; i < 20; i++, requests++) REQUIRE(a.take(1, now, 1, nullptr).verdict == Verdict::kAllow);
    answer(a, b, now, ms % 50 == 0);  // 50 ms sync interval
    now += kMillis;
  }
  double per_request = static_cast<double>(a.stats().takes) / requests;
  INFO("takes " << a.stats().takes << " for " << requests << " requests");
  CHECK(per_request <= 0.05);
}

TEST_CASE("lease: a refund goes back into the lease", "[cluster]") {
  LeaseAccount a(params(10, 5));
  FakeBudget b{10};
  Nanos now = kSeconds;
  a.take(1, now, 1, nullptr);
  answer(a, b, now, false);
  limiter::ChargeReceipt r;
  auto d = a.take(1, now, 1, &r);
  REQUIRE(d.charged);
  int64_t before = a.peek(1, now, 1).remaining;
  a.refund(r, now);
  CHECK(a.peek(1, now, 1).remaining == before + 1);
}

TEST_CASE("lease: Redis away -> down until a grant; leases restart from zero (no burst)", "[cluster]") {
  LeaseAccount a(params(100, 10));
  FakeBudget b{100};
  Nanos now = kSeconds;
  a.take(9, now, 1, nullptr);
  std::vector<LeaseTake> takes;
  a.collect(now, false, &takes);
  REQUIRE(takes.size() == 1);
  a.applyFailure(takes[0]);
  CHECK(a.down());
  takes.clear();
  a.collect(now, true, &takes);
  CHECK(takes.empty());  // nothing is sent while down (the worker probes with PING)
  a.setDown(false);
  CHECK_FALSE(a.down());
  // After recovery the first take asks for one chunk at most: nothing spent meanwhile is reported.
  a.take(9, now, 1, nullptr);
  takes.clear();
  a.collect(now, false, &takes);
  REQUIRE(takes.size() == 1);
  CHECK(takes[0].want <= 1 + 10);
}

TEST_CASE("lease: idle keys are swept after their window", "[cluster]") {
  LeaseAccount a(params(100, 10));
  FakeBudget b{100};
  Nanos now = kSeconds;
  for (uint64_t k = 0; k < 100; k++) a.take(k, now, 1, nullptr);
  answer(a, b, now, false);
  CHECK(a.size() == 100);
  CHECK(a.sweep(now + 3 * kSeconds) == 0);
}

ConfigLoadResult load(const std::string& extra) {
  return loadConfigString(
      "listeners: [{address: 127.0.0.1:8080}]\n"
      "upstreams: {sf: {servers: [{address: 127.0.0.1:9080}]}}\n" + extra, "t.yaml");
}

std::string errors(const ConfigLoadResult& r) {
  std::string s;
  for (const auto& e : r.errors) s += e.format() + "\n";
  return s;
}

TEST_CASE("config: redis section, cluster-scope rules and sale gates", "[cluster]") {
  auto r = load(
      "redis: {endpoints: [127.0.0.1:6379], expected_instances: 4, password: s3cret, db: 2}\n"
      "limits:\n  rules:\n"
      "    - {id: g, key: global, rate: 400r/s, scope: cluster, sync_interval: 20ms, on_redis_down: fail_closed}\n"
      "    - {id: m, key: member, algorithm: sliding_window, limit: 3, window: 1m, scope: cluster,"
      " cluster_mode: exact, redis_timeout: 3ms}\n"
      "routes:\n  - name: c\n    upstream: sf\n    limits: [g, m]\n"
      "    sale_gate: {item: item, sold_out: {status: 410, body: gone}}\n");
  INFO(errors(r));
  REQUIRE(r.ok());
  const Config& c = *r.config;
  REQUIRE(c.redis);
  CHECK(c.redis->expected_instances == 4);
  CHECK(c.redis->db == 2);
  CHECK(c.redis->password == "s3cret");
  CHECK(c.limit_rules[0].cluster_scope);
  CHECK_FALSE(c.limit_rules[0].cluster_exact);
  CHECK(c.limit_rules[0].fail_closed);
  CHECK(c.limit_rules[0].sync_interval == 20 * kMillis);
  CHECK(c.limit_rules[1].cluster_exact);
  CHECK(c.limit_rules[1].redis_timeout == 3 * kMillis);
  REQUIRE(c.routes[0].sale_gate);
  CHECK(c.routes[0].sale_gate->status == 410);
  CHECK(c.routes[0].sale_gate->keyFor("42") == "sale:{42}:stock");
}

TEST_CASE("config: cluster-scope errors carry file:line:col", "[cluster]") {
  auto r = load("limits:\n  rules:\n    - {id: g, key: global, rate: 4r/s, scope: cluster}\n");
  CHECK_THAT(errors(r), Catch::Contains("t.yaml:5:") && Catch::Contains("needs the top-level 'redis:' section"));
  r = load("redis: {endpoints: [127.0.0.1:6379]}\nlimits:\n  rules:\n"
           "    - {id: g, key: global, rate: 4r/s, cluster_mode: exact}\n");
  CHECK_THAT(errors(r), Catch::Contains("only a rule with 'scope: cluster'"));
  r = load("redis: {endpoints: [localhost:6379]}\n");
  CHECK_THAT(errors(r), Catch::Contains("t.yaml:3:") && Catch::Contains("not a numeric IP"));
  r = load("redis: {endpoints: [127.0.0.1:6379], password_file: /nonexistent/pw}\n");
  CHECK_THAT(errors(r), Catch::Contains("cannot read '/nonexistent/pw'"));
  r = load("redis: {endpoints: [127.0.0.1:6379]}\n"
           "routes:\n  - name: c\n    upstream: sf\n    sale_gate: {quota_key: 'stock:x'}\n");
  CHECK_THAT(errors(r), Catch::Contains("must contain {ITEM}"));
}

TEST_CASE("config: redis list sync and shared risk keys, defaults and bounds", "[cluster]") {
  auto r = load("redis: {endpoints: [127.0.0.1:6379]}\n");
  REQUIRE(r.ok());
  CHECK_FALSE(r.config->redis->sync_lists);
  CHECK_FALSE(r.config->redis->share_risk);
  CHECK(r.config->redis->lists_resync_interval == 10 * kSeconds);
  CHECK(r.config->redis->share_min_score == 30);
  CHECK(r.config->redis->share_interval == 50 * kMillis);
  CHECK(r.config->redis->spend_timeout == 50 * kMillis);
  r = load("redis: {endpoints: [127.0.0.1:6379], sync_lists: true, lists_resync_interval: 2s,"
           " share_risk: true, share_min_score: 60, share_interval: 20ms, spend_timeout: 30ms}\n");
  INFO(errors(r));
  REQUIRE(r.ok());
  CHECK(r.config->redis->sync_lists);
  CHECK(r.config->redis->share_risk);
  CHECK(r.config->redis->lists_resync_interval == 2 * kSeconds);
  CHECK(r.config->redis->share_min_score == 60);
  CHECK(r.config->redis->share_interval == 20 * kMillis);
  CHECK(r.config->redis->spend_timeout == 30 * kMillis);
  r = load("redis: {endpoints: [127.0.0.1:6379], lists_resync_interval: 10ms}\n");
  CHECK_THAT(errors(r), Catch::Contains("t.yaml:3:") && Catch::Contains("lists_resync_interval: must be at least 100ms"));
  r = load("redis: {endpoints: [127.0.0.1:6379], share_interval: 1ms}\n");
  CHECK_THAT(errors(r), Catch::Contains("share_interval: must be at least 10ms"));
  r = load("redis: {endpoints: [127.0.0.1:6379], share_min_score: 0}\n");
  CHECK_THAT(errors(r), Catch::Contains("share_min_score") && Catch::Contains("1..100"));
}

}  // namespace
}  // namespace sluice
