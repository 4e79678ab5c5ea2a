// The cluster-scope Lua scripts (core/redis/scripts/*.lua) against a real redis-server: each
// script's contract, time from Redis TIME, and the sale gate under concurrent clients on several
// threads (no oversell).
#include <atomic>
#include <thread>

#include "core/redis/client.h"
#include "core/redis/scripts.h"
#include "tests/unit/core/redis/redis_test_support.h"

namespace sluice::redis {
namespace {

using namespace testing;
using namespace std::chrono_literals;

std::vector<int64_t> ints(const RedisResult& r, size_t n) {
  INFO(r.reply.debugString() << " " << r.detail);
  REQUIRE(r.succeeded());
  std::vector<int64_t> v(n);
  REQUIRE(scripts::integers(r.reply, v.data(), n));
  return v;
}

struct ScriptEnv {
  RedisServer server;
  TestLoop loop;
  RedisClientPtr client = RedisClient::create(loop.get(), standaloneOptions(server));
  std::vector<int64_t> run(const RedisScriptPtr& s, std::vector<std::string> keys, std::vector<std::string> argv,
                           size_t n) {
    return ints(evalSync(loop, *client, s, std::move(keys), std::move(argv)), n);
  }
};

TEST_CASE("redis scripts: every embedded script compiles on the server", "[redis]") {
  ScriptEnv env;
  for (const auto& s : scripts::all()) {
    INFO(s->name());
    RedisResult r = call(env.loop, *env.client, {"SCRIPT", "LOAD", s->body()});
    REQUIRE(r.succeeded());
    CHECK(r.reply.str == s->sha1());
  }
}

TEST_CASE("redis scripts: gcra allows the burst, then one per interval; refunds give units back", "[redis]") {
  ScriptEnv env;
  const std::string interval = "100000";  // 10/s
  for (int i = 0; i < 5; i++) {
    auto v = env.run(scripts::gcra(), {"{m1}:gcra"}, {interval, "5", "1"}, 4);
    CHECK(v[0] == 1);
    CHECK(v[1] == 4 - i);
  }
  auto denied = env.run(scripts::gcra(), {"{m1}:gcra"}, {interval, "5", "1"}, 4);
  CHECK(denied[0] == 0);
  CHECK(denied[2] > 0);         // retry after ...
  CHECK(denied[2] <= 100000);   // ... at most one interval
  auto peek = env.run(scripts::gcra(), {"{m1}:gcra"}, {interval, "5", "0"}, 4);
  CHECK(peek[1] == 0);
  // A later rule rejected the request: give the unit back, and it can be taken again.
  auto refund = env.run(scripts::gcra(), {"{m1}:gcra"}, {interval, "5", "-1"}, 4);
  CHECK(refund[0] == 1);
  CHECK(env.run(scripts::gcra(), {"{m1}:gcra"}, {interval, "5", "1"}, 4)[0] == 1);
  // The key expires on its own once the bucket is full again.
  int64_t pttl = call(env.loop, *env.client, {"PTTL", "{m1}:gcra"}).reply.integer;
  CHECK(pttl > 0);
  CHECK(pttl <= 502);
  // After one interval, one more unit.
  env.loop.runFor(110ms);
  CHECK(env.run(scripts::gcra(), {"{m1}:gcra"}, {interval, "5", "1"}, 4)[0] == 1);
  CHECK(env.run(scripts::gcra(), {"{m1}:gcra"}, {interval, "5", "1"}, 4)[0] == 0);
}

TEST_CASE("redis scripts: sliding window counts across the window boundary", "[redis]") {
  ScriptEnv env;
  int allowed = 0;
  int64_t windowEnd = 0;
  for (int i = 0; i < 15; i++) {
    auto v = env.run(scripts::slidingWindow(), {"{m2}:sw"}, {"60000", "10", "1"}, 4);
    allowed += static_cast<int>(v[0]);
    windowEnd = v[3];
    if (!v[0]) CHECK(v[2] >= 1);
  }
  CHECK(allowed == 10);
  CHECK(windowEnd % 60000 == 0);
  auto back = env.run(scripts::slidingWindow(), {"{m2}:sw"}, {"60000", "10", "-2"}, 4);
  CHECK(back[0] == 1);
  int more = 0;
  for (int i = 0; i < 5; i++) more += static_cast<int>(env.run(scripts::slidingWindow(), {"{m2}:sw"}, {"60000", "10", "1"}, 4)[0]);
  CHECK(more == 2);

  // A short window: the previous window's count still weighs on the next one.
  for (int i = 0; i < 4; i++) env.run(scripts::slidingWindow(), {"{m3}:sw"}, {"200", "4", "1"}, 4);
  CHECK(env.run(scripts::slidingWindow(), {"{m3}:sw"}, {"200", "4", "1"}, 4)[0] == 0);
  env.loop.runFor(450ms);  // two windows later nothing counts
  CHECK(env.run(scripts::slidingWindow(), {"{m3}:sw"}, {"200", "4", "1"}, 4)[0] == 1);
}

TEST_CASE("redis scripts: lease take grants up to the global budget per window", "[redis]") {
  ScriptEnv env;
  std::vector<int64_t> grants;
  int64_t windowEnd = 0, now = 0;
  for (int i = 0; i < 5; i++) {
    auto v = env.run(scripts::leaseTake(), {"{r1}:lease"}, {"60000", "100", "30"}, 4);
    grants.push_back(v[0]);
    windowEnd = v[1];
    now = v[3];
  }
  CHECK(grants == std::vector<int64_t>{30, 30, 30, 10, 0});
  CHECK(windowEnd > now);
  CHECK(windowEnd - now <= 60000);
  auto ret = env.run(scripts::leaseTake(), {"{r1}:lease"}, {"60000", "100", "-15"}, 4);
  CHECK(ret[2] == 85);
  CHECK(env.run(scripts::leaseTake(), {"{r1}:lease"}, {"60000", "100", "50"}, 4)[0] == 15);
  // A new window starts from zero.
  for (int i = 0; i < 2; i++) env.run(scripts::leaseTake(), {"{r2}:lease"}, {"100", "5", "5"}, 4);
  env.loop.runFor(110ms);
  CHECK(env.run(scripts::leaseTake(), {"{r2}:lease"}, {"100", "5", "5"}, 4)[0] == 5);
}

TEST_CASE("redis scripts: concurrency leases expire with their instance", "[redis]") {
  ScriptEnv env;
  const std::string key = "{route:checkout}:active";
  CHECK(env.run(scripts::concurrencyAcquire(), {key}, {"A", "3", "2", "200"}, 3) == std::vector<int64_t>{1, 2, 2});
  CHECK(env.run(scripts::concurrencyAcquire(), {key}, {"B", "3", "1", "5000"}, 3) == std::vector<int64_t>{1, 3, 1});
  CHECK(env.run(scripts::concurrencyAcquire(), {key}, {"B", "3", "1", "5000"}, 3)[0] == 0);
  // B releases one and takes it again.
  CHECK(env.run(scripts::concurrencyRelease(), {key}, {"B", "1", "5000"}, 1)[0] == 0);
  CHECK(env.run(scripts::concurrencyAcquire(), {key}, {"B", "3", "1", "5000"}, 3)[0] == 1);
  // A "crashes" (stops renewing): after its 200 ms TTL its two slots are free.
  env.loop.runFor(250ms);
  auto v = env.run(scripts::concurrencyAcquire(), {key}, {"B", "3", "2", "5000"}, 3);
  CHECK(v == std::vector<int64_t>{1, 3, 3});
  // Releases never go below zero, and a late release from A steals nothing.
  CHECK(env.run(scripts::concurrencyRelease(), {key}, {"A", "5", "200"}, 1)[0] == 0);
  CHECK(env.run(scripts::concurrencyAcquire(), {key}, {"C", "3", "1", "5000"}, 3)[0] == 0);
  // Heartbeat (0 units) is always granted and renews.
  CHECK(env.run(scripts::concurrencyAcquire(), {key}, {"B", "3", "0", "5000"}, 3) == std::vector<int64_t>{1, 3, 3});
}

TEST_CASE("redis scripts: sale gate takes, returns and never goes below zero", "[redis]") {
  ScriptEnv env;
  CHECK(env.run(scripts::saleTake(), {"{item:9}:stock"}, {"1"}, 2) == std::vector<int64_t>{0, -1});  // no quota
  REQUIRE(call(env.loop, *env.client, {"SET", "{item:9}:stock", "3"}).ok());
  CHECK(env.run(scripts::saleTake(), {"{item:9}:stock"}, {"1"}, 2) == std::vector<int64_t>{1, 2});
  CHECK(env.run(scripts::saleTake(), {"{item:9}:stock"}, {"3"}, 2) == std::vector<int64_t>{0, 2});  // all or nothing
  CHECK(env.run(scripts::saleTake(), {"{item:9}:stock"}, {"2"}, 2) == std::vector<int64_t>{2, 0});
  CHECK(env.run(scripts::saleTake(), {"{item:9}:stock"}, {"1"}, 2) == std::vector<int64_t>{0, 0});
  RedisResult r = evalSync(env.loop, *env.client, scripts::saleReturn(), {"{item:9}:stock"}, {"1", "3"});
  CHECK(r.reply.integer == 1);
  r = evalSync(env.loop, *env.client, scripts::saleReturn(), {"{item:9}:stock"}, {"5", "3"});
  CHECK(r.reply.integer == 3);  // capped at the quota
  r = evalSync(env.loop, *env.client, scripts::saleReturn(), {"{item:0}:stock"}, {"1"});
  CHECK(r.reply.integer == -1);  // nothing created
}

TEST_CASE("redis scripts: sale gate never oversells under concurrent clients", "[redis]") {
  RedisServer server;
  const int kStock = 500, kThreads = 4, kClientsPerThread = 4, kTakesPerClient = 60;  // 960 takes for 500 units
  REQUIRE(server.cli("SET {item:1}:stock " + std::to_string(kStock)) == "OK");
  std::atomic<int64_t> taken{0}, negative{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; t++) {
    threads.emplace_back([&] {
      TestLoop loop;
      std::vector<RedisClientPtr> clients;
      int done = 0;
      for (int c = 0; c < kClientsPerThread; c++) clients.push_back(RedisClient::create(loop.get(), standaloneOptions(server)));
      for (auto& client : clients) {
        for (int i = 0; i < kTakesPerClient; i++) {
          client->eval(scripts::saleTake(), {"{item:1}:stock"}, {"1"}, [&](RedisResult& r) {
            done++;
            int64_t v[2];
            if (!r.succeeded() || !scripts::integers(r.reply, v, 2)) {
              failures++;
              return;
            }
            taken += v[0];
            if (v[1] < 0) negative++;
          }, 10 * kSeconds);
        }
      }
      loop.runUntil([&] { return done == kClientsPerThread * kTakesPerClient; }, 20s);
      clients.clear();
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(negative == 0);
  CHECK(taken == kStock);
  CHECK(server.cli("GET {item:1}:stock") == "0");
}

TEST_CASE("redis scripts: spend once", "[redis]") {
  ScriptEnv env;
  auto first = env.run(scripts::spendOnce(), {"{pt}:spent:abc"}, {"150", "inst-1"}, 2);
  CHECK(first == std::vector<int64_t>{1, 150});
  auto again = env.run(scripts::spendOnce(), {"{pt}:spent:abc"}, {"150", "inst-2"}, 2);
  CHECK(again[0] == 0);
  CHECK(again[1] > 0);
  CHECK(call(env.loop, *env.client, {"GET", "{pt}:spent:abc"}).reply.str == "inst-1");
  env.loop.runFor(200ms);
  CHECK(env.run(scripts::spendOnce(), {"{pt}:spent:abc"}, {"150", "inst-2"}, 2)[0] == 1);
}

}  // namespace
}  // namespace sluice::redis
