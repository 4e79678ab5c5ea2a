// The balancer: UpstreamPool::pick() over an UpstreamCluster's servers, and the cluster's passive
// health (reportFailure / reportSuccess). pick() makes no connections, so a bare loop suffices.
#include <uv.h>

#include <catch2/catch.hpp>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"
#include "proxy/config/config.h"
#include "proxy/upstream/upstream_cluster.h"
#include "proxy/upstream/upstream_pool.h"

namespace sluice {
namespace {

constexpr Nanos kNow = 1000 * kSeconds;

UpstreamConfig upstream(BalanceKind kind, std::vector<uint32_t> weights) {
  UpstreamConfig u;
  u.name = "shop";
  u.balance = kind;
  for (size_t i = 0; i < weights.size(); i++) {
    UpstreamServerConfig s;
    s.host = "10.0.0." + std::to_string(i + 1);
    s.port = 8080;
    s.weight = weights[i];
    u.servers.push_back(s);
  }
  return u;
}

// A loop for the pool's constructor, a cluster, and a pool: what a worker would hold.
struct Fixture {
  uv_loop_t loop;
  UpstreamClusterPtr cluster;
  std::unique_ptr<UpstreamPool> pool;
  LogLevel saved_level;

  explicit Fixture(const UpstreamConfig& cfg) {
    saved_level = log::level();
    log::setLevel(LogLevel::kError);  // ejections log a warning; keep test output clean
    REQUIRE(uv_loop_init(&loop) == 0);
    cluster = std::make_shared<UpstreamCluster>(cfg);
    pool = std::make_unique<UpstreamPool>(cluster, &loop);
  }
  ~Fixture() {
    pool.reset();
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK(uv_loop_close(&loop) == 0);
    log::setLevel(saved_level);
  }
  int pick(uint64_t key = 0, uint64_t tried = 0, Nanos now = kNow) {
    return pool->pick(key, tried, now);
  }
  std::string picks(int n, uint64_t tried = 0, Nanos now = kNow) {
    std::string out;
    for (int i = 0; i < n; i++) {
      int p = pick(0, tried, now);
      out += p < 0 ? '-' : static_cast<char>('a' + p);
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------------
// Round robin

TEST_CASE("UpstreamCluster builds servers from the config", "[proxy][upstream][balancer]") {
  UpstreamConfig cfg = upstream(BalanceKind::kRoundRobin, {1, 2});
  cfg.servers[1].host = "::1";
  UpstreamCluster c(cfg);
  REQUIRE(c.size() == 2);
  CHECK(c.server(0).address == "10.0.0.1:8080");
  CHECK(c.server(1).address == "[::1]:8080");
  CHECK(c.server(0).sockaddr.ss_family == AF_INET);
  CHECK(c.server(1).sockaddr.ss_family == AF_INET6);
  CHECK(c.server(0).available(kNow));
  CHECK(c.config().name == "shop");
}

TEST_CASE("Round robin with equal weights takes turns", "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kRoundRobin, {1, 1, 1}));
  CHECK(f.picks(9) == "abcabcabc");
}

TEST_CASE("Smooth weighted round robin gives nginx's sequence for 5,1,1",
          "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kRoundRobin, {5, 1, 1}));
  CHECK(f.picks(7) == "aabacaa");
  CHECK(f.picks(7) == "aabacaa");
  CHECK(f.picks(14) == "aabacaaaabacaa");
}

TEST_CASE("Smooth weighted round robin shares picks by weight", "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kRoundRobin, {3, 2, 0}));  // weight 0 counts as 1
  std::map<int, int> counts;
  for (int i = 0; i < 600; i++) counts[f.pick()]++;
  CHECK(counts[0] == 300);
  CHECK(counts[1] == 200);
  CHECK(counts[2] == 100);
}

TEST_CASE("Round robin skips ejected and unhealthy servers", "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kRoundRobin, {1, 1, 1}));
  SECTION("ejected until a time in the future") {
    f.cluster->server(1).ejected_until = kNow + 5 * kSeconds;
    CHECK(f.picks(6) == "acacac");
    // Once the ejection lapses the server is back.
    std::string later = f.picks(6, 0, kNow + 5 * kSeconds);
    CHECK(later.find('b') != std::string::npos);
  }
  SECTION("ejection in the past does not count") {
    f.cluster->server(1).ejected_until = kNow - 1;
    CHECK(f.picks(3).find('b') != std::string::npos);
  }
  SECTION("unhealthy by active checks") {
    f.cluster->server(0).healthy = false;
    f.cluster->server(2).healthy = false;
    CHECK(f.picks(4) == "bbbb");
    f.cluster->server(0).healthy = true;
    std::string s = f.picks(4);
    CHECK(s.find('a') != std::string::npos);
    CHECK(s.find('c') == std::string::npos);
  }
}

TEST_CASE("Panic mode: with no server available every server is a candidate",
          "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kRoundRobin, {1, 1, 1}));
  f.cluster->server(0).healthy = false;
  f.cluster->server(1).healthy = false;
  f.cluster->server(2).ejected_until = kNow + kSeconds;
  std::string s = f.picks(6);
  CHECK(s.find('-') == std::string::npos);
  CHECK(s == "abcabc");
}

TEST_CASE("pick excludes servers in the tried bitmask", "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kRoundRobin, {1, 1, 1}));
  CHECK(f.picks(4, 0b001) == "bcbc");
  CHECK(f.picks(3, 0b011) == "ccc");
  CHECK(f.picks(3, 0b101) == "bbb");

  SECTION("an untried unhealthy server beats nothing (panic among the untried)") {
    f.cluster->server(2).healthy = false;
    CHECK(f.picks(2, 0b011) == "cc");
  }
  SECTION("a healthy untried server beats an unhealthy one") {
    f.cluster->server(1).healthy = false;
    CHECK(f.picks(3, 0b001) == "ccc");
  }
}

TEST_CASE("pick on an empty upstream is -1", "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kRoundRobin, {}));
  CHECK(f.pick() == -1);
}

// ---------------------------------------------------------------------------------------------
// Least connections

TEST_CASE("Least conn prefers the lowest active/weight", "[proxy][upstream][balancer]") {
  SECTION("equal weights") {
    Fixture f(upstream(BalanceKind::kLeastConn, {1, 1, 1}));
    f.cluster->server(0).active = 5;
    f.cluster->server(1).active = 2;
    f.cluster->server(2).active = 7;
    for (int i = 0; i < 5; i++) CHECK(f.pick() == 1);
    f.cluster->server(1).active = 9;
    CHECK(f.pick() == 0);
  }
  SECTION("weights scale the load") {
    Fixture f(upstream(BalanceKind::kLeastConn, {4, 1}));
    // (active + 1) / weight: a = 6/4 = 1.5, b = 2/1 = 2.
    f.cluster->server(0).active = 5;
    f.cluster->server(1).active = 1;
    CHECK(f.pick() == 0);
    // a = 8/4 = 2, b = 1/1 = 1.
    f.cluster->server(0).active = 7;
    f.cluster->server(1).active = 0;
    CHECK(f.pick() == 1);
  }
  SECTION("ties rotate instead of piling on one server") {
    Fixture f(upstream(BalanceKind::kLeastConn, {1, 1, 1}));
    std::map<int, int> counts;
    for (int i = 0; i < 30; i++) counts[f.pick()]++;
    CHECK(counts[0] == 10);
    CHECK(counts[1] == 10);
    CHECK(counts[2] == 10);
  }
  SECTION("skips unavailable and tried servers") {
    Fixture f(upstream(BalanceKind::kLeastConn, {1, 1, 1}));
    f.cluster->server(0).active = 0;
    f.cluster->server(1).active = 3;
    f.cluster->server(2).active = 9;
    f.cluster->server(0).ejected_until = kNow + kSeconds;
    CHECK(f.pick() == 1);
    CHECK(f.pick(0, 0b010) == 2);
    f.cluster->server(1).healthy = false;
    f.cluster->server(2).healthy = false;
    CHECK(f.pick(0, 0b010) >= 0);  // panic: still an answer
  }
}

// ---------------------------------------------------------------------------------------------
// Consistent hash

TEST_CASE("Hash: the same key always goes to the same server", "[proxy][upstream][balancer]") {
  UpstreamConfig cfg = upstream(BalanceKind::kHash, {1, 1, 1, 1});
  Fixture f(cfg);
  Fixture g(cfg);  // another worker's pool over another cluster built from the same config
  for (int i = 0; i < 200; i++) {
    uint64_t key = hash64("member-" + std::to_string(i));
    int first = f.pick(key);
    REQUIRE(first >= 0);
    CHECK(f.pick(key) == first);
    CHECK(f.pick(key) == first);
    CHECK(g.pick(key) == first);
  }
}

TEST_CASE("Hash spreads 10k keys roughly evenly over 4 servers", "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kHash, {1, 1, 1, 1}));
  std::map<int, int> counts;
  for (int i = 0; i < 10000; i++) counts[f.pick(hash64("key-" + std::to_string(i)))]++;
  REQUIRE(counts.size() == 4);
  for (const auto& [server, n] : counts) {
    CAPTURE(server, n);
    CHECK(server >= 0);
    CHECK(n > 2500 * 0.75);
    CHECK(n < 2500 * 1.25);
  }
}

TEST_CASE("Hash honours weights", "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kHash, {3, 1}));
  int heavy = 0;
  for (int i = 0; i < 10000; i++)
    if (f.pick(hash64("key-" + std::to_string(i))) == 0) heavy++;
  CHECK(heavy > 7500 * 0.9);
  CHECK(heavy < 7500 * 1.1);
}

TEST_CASE("Hash: losing a server moves only that server's keys", "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kHash, {1, 1, 1, 1}));
  std::vector<int> before;
  for (int i = 0; i < 10000; i++) before.push_back(f.pick(hash64("key-" + std::to_string(i))));

  auto check_moves = [&](int lost) {
    int moved = 0;
    for (int i = 0; i < 10000; i++) {
      int now = f.pick(hash64("key-" + std::to_string(i)));
      CHECK(now != lost);
      if (before[i] == lost) {
        moved++;
      } else if (now != before[i]) {
        FAIL_CHECK("key " << i << " moved from " << before[i] << " to " << now);
      }
    }
    CHECK(moved > 0);
  };
  SECTION("marked unhealthy") {
    f.cluster->server(2).healthy = false;
    check_moves(2);
    // And it comes back to exactly where it was.
    f.cluster->server(2).healthy = true;
    for (int i = 0; i < 10000; i++) CHECK(f.pick(hash64("key-" + std::to_string(i))) == before[i]);
  }
  SECTION("ejected") {
    f.cluster->server(0).ejected_until = kNow + kSeconds;
    check_moves(0);
  }
}

TEST_CASE("Hash: a retry goes to the next server on the ring, the same one every time",
          "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kHash, {1, 1, 1, 1}));
  for (int i = 0; i < 100; i++) {
    uint64_t key = hash64("key-" + std::to_string(i));
    int first = f.pick(key);
    int second = f.pick(key, 1ULL << first);
    CHECK(second >= 0);
    CHECK(second != first);
    CHECK(f.pick(key, 1ULL << first) == second);
  }
}

TEST_CASE("Hash: panic mode still picks when every server is down",
          "[proxy][upstream][balancer]") {
  Fixture f(upstream(BalanceKind::kHash, {1, 1, 1}));
  uint64_t key = hash64("k");
  int healthy_pick = f.pick(key);
  for (size_t i = 0; i < 3; i++) f.cluster->server(i).healthy = false;
  CHECK(f.pick(key) == healthy_pick);
}

// ---------------------------------------------------------------------------------------------
// Passive health

TEST_CASE("reportFailure ejects after max_fails in a row", "[proxy][upstream][balancer]") {
  UpstreamConfig cfg = upstream(BalanceKind::kRoundRobin, {1, 1});
  cfg.max_fails = 3;
  cfg.fail_timeout = 10 * kSeconds;
  Fixture f(cfg);
  auto& c = *f.cluster;

  c.reportFailure(0, kNow);
  c.reportFailure(0, kNow);
  CHECK(c.server(0).available(kNow));
  CHECK(c.server(0).consecutive_fails.load() == 2);
  c.reportFailure(0, kNow + kMillis);
  CHECK_FALSE(c.server(0).available(kNow + kMillis));
  CHECK(c.server(0).ejected_until.load() == kNow + kMillis + 10 * kSeconds);
  CHECK(c.server(0).failures.load() == 3);
  CHECK(c.server(1).available(kNow));

  // pick() stays away while ejected, and comes back after fail_timeout.
  CHECK(f.picks(4, 0, kNow + 5 * kSeconds) == "bbbb");
  CHECK_FALSE(c.server(0).available(kNow + kMillis + 10 * kSeconds - 1));
  CHECK(c.server(0).available(kNow + kMillis + 10 * kSeconds));
  CHECK(f.picks(4, 0, kNow + 11 * kSeconds).find('a') != std::string::npos);
}

TEST_CASE("reportSuccess resets the failure streak", "[proxy][upstream][balancer]") {
  UpstreamConfig cfg = upstream(BalanceKind::kRoundRobin, {1});
  cfg.max_fails = 3;
  Fixture f(cfg);
  auto& c = *f.cluster;
  for (int round = 0; round < 5; round++) {
    c.reportFailure(0, kNow);
    c.reportFailure(0, kNow);
    c.reportSuccess(0);
    CHECK(c.server(0).consecutive_fails.load() == 0);
    CHECK(c.server(0).available(kNow));
  }
  CHECK(c.server(0).failures.load() == 10);
  // After an ejection the streak starts over: max_fails more failures are needed.
  for (int i = 0; i < 3; i++) c.reportFailure(0, kNow);
  CHECK_FALSE(c.server(0).available(kNow));
  CHECK(c.server(0).consecutive_fails.load() == 0);
}

TEST_CASE("max_fails 0 disables passive ejection", "[proxy][upstream][balancer]") {
  UpstreamConfig cfg = upstream(BalanceKind::kRoundRobin, {1});
  cfg.max_fails = 0;
  Fixture f(cfg);
  for (int i = 0; i < 100; i++) f.cluster->reportFailure(0, kNow);
  CHECK(f.cluster->server(0).available(kNow));
  CHECK(f.cluster->server(0).failures.load() == 100);
}

}  // namespace
}  // namespace sluice
