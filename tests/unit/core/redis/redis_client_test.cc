// The async Redis client against a real redis-server (standalone): reply types, pipelining order,
// batches, timeouts, AUTH/SELECT, EVALSHA with NOSCRIPT fallback, reconnect with backoff, the
// circuit breaker, destruction with calls in flight, and loopback figures.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/redis/client.h"
#include "core/redis/scripts.h"
#include "tests/unit/core/redis/redis_test_support.h"

namespace sluice::redis {
namespace {

using namespace testing;
using namespace std::chrono_literals;

TEST_CASE("redis client: reply types are deep-copied values", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto client = RedisClient::create(loop.get(), standaloneOptions(server));

  RedisResult r = call(loop, *client, {"SET", "k", "v\0x"});
  REQUIRE(r.ok());
  CHECK(r.reply.type == RedisReplyType::kStatus);
  CHECK(r.reply.str == "OK");

  std::string binary("a\0b", 3);
  REQUIRE(call(loop, *client, {"SET", "bin", binary}).ok());
  r = call(loop, *client, {"GET", "bin"});
  CHECK(r.reply.type == RedisReplyType::kString);
  CHECK(r.reply.str == binary);

  r = call(loop, *client, {"GET", "missing"});
  CHECK(r.ok());
  CHECK(r.reply.isNil());

  r = call(loop, *client, {"INCRBY", "n", "41"});
  CHECK(r.reply.isInteger());
  CHECK(r.reply.integer == 41);

  REQUIRE(call(loop, *client, {"RPUSH", "list", "a", "b", "c"}).ok());
  r = call(loop, *client, {"LRANGE", "list", "0", "-1"});
  REQUIRE(r.reply.isArray());
  REQUIRE(r.reply.elements.size() == 3);
  CHECK(r.reply.elements[2].str == "c");

  r = call(loop, *client, {"INCR", "list"});  // WRONGTYPE: Redis answered, so ok() with an error reply
  CHECK(r.ok());
  CHECK(r.reply.isError());
  CHECK(r.reply.errorIs("WRONGTYPE"));
  CHECK_FALSE(r.succeeded());
  CHECK(client->stats().errorReplies == 1);
}

TEST_CASE("redis client: pipelined commands complete in order", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto client = RedisClient::create(loop.get(), standaloneOptions(server));
  std::vector<int64_t> seen;
  const int kN = 2000;
  for (int i = 0; i < kN; i++) {
    client->command({"INCR", "counter"}, [&](RedisResult& r) { seen.push_back(r.ok() ? r.reply.integer : -1); });
  }
  REQUIRE(loop.runUntil([&] { return seen.size() == kN; }));
  for (int i = 0; i < kN; i++) REQUIRE(seen[i] == i + 1);
  CHECK(client->stats().commands == kN);
}

TEST_CASE("redis client: a batch calls back once with every result in order", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto client = RedisClient::create(loop.get(), standaloneOptions(server));
  std::vector<RedisCommand> cmds;
  cmds.push_back(RedisCommand::of({"SET", "a", "1"}));
  cmds.push_back(RedisCommand::of({"INCR", "a"}));
  cmds.push_back(RedisCommand::of({"HSET", "a", "f", "v"}));  // WRONGTYPE in the middle
  cmds.push_back(RedisCommand::of({"GET", "a"}));
  cmds.push_back(RedisCommand::keyless({"PING"}));
  int calls = 0;
  std::vector<RedisResult> got;
  client->batch(std::move(cmds), [&](std::vector<RedisResult>& rs) {
    calls++;
    got = std::move(rs);
  });
  REQUIRE(loop.runUntil([&] { return calls == 1; }));
  loop.runFor(20ms);
  CHECK(calls == 1);
  REQUIRE(got.size() == 5);
  CHECK(got[0].reply.str == "OK");
  CHECK(got[1].reply.integer == 2);
  CHECK(got[2].reply.errorIs("WRONGTYPE"));
  CHECK(got[3].reply.str == "2");
  CHECK(got[4].reply.str == "PONG");

  // An empty batch still calls back (on a later loop turn, never inside batch()).
  bool inside = true, emptyDone = false;
  client->batch({}, [&](std::vector<RedisResult>& rs) {
    CHECK(rs.empty());
    CHECK_FALSE(inside);
    emptyDone = true;
  });
  inside = false;
  REQUIRE(loop.runUntil([&] { return emptyDone; }));
}

TEST_CASE("redis client: a timed-out command calls back once and its late reply is dropped", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto options = standaloneOptions(server);
  options.breakerFailures = 100;  // this test is about the timeout alone
  auto client = RedisClient::create(loop.get(), options);
  REQUIRE(call(loop, *client, {"SET", "k", "before"}).ok());

  server.pause();  // SIGSTOP: the server hangs with the connection open
  int calls = 0;
  RedisResult got;
  auto start = std::chrono::steady_clock::now();
  std::chrono::milliseconds took{};
  client->command({"GET", "k"}, [&](RedisResult& r) {
    calls++;
    got = r;
    took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  }, 50 * kMillis);
  REQUIRE(loop.runUntil([&] { return calls == 1; }));
  CHECK(got.status == RedisStatus::kTimeout);
  CHECK(took >= 45ms);
  CHECK(took < 150ms);
  CHECK(got.toError().type == ErrorType::kReadTimeout);

  server.resume();  // the late reply arrives now and must be discarded
  RedisResult after = call(loop, *client, {"GET", "k"});
  CHECK(after.reply.str == "before");
  CHECK(calls == 1);
  CHECK(client->stats().timeouts == 1);
}

TEST_CASE("redis client: AUTH with password and ACL user, SELECT db on connect", "[redis]") {
  RedisServer server({"--requirepass", "s3cret"});
  REQUIRE(server.cli("-a s3cret --no-auth-warning ACL SETUSER edge on '>edgepw' '~*' '+@all'") == "OK");
  TestLoop loop;

  SECTION("password and database") {
    auto options = standaloneOptions(server);
    options.password = "s3cret";
    options.database = 3;
    auto client = RedisClient::create(loop.get(), options);
    REQUIRE(call(loop, *client, {"SET", "where", "db3"}).succeeded());
    CHECK(server.cli("-a s3cret --no-auth-warning -n 3 GET where") == "db3");
    CHECK(server.cli("-a s3cret --no-auth-warning -n 0 EXISTS where") == "0");
  }
  SECTION("ACL username") {
    auto options = standaloneOptions(server);
    options.username = "edge";
    options.password = "edgepw";
    auto client = RedisClient::create(loop.get(), options);
    RedisResult r = call(loop, *client, {"ACL", "WHOAMI"});
    CHECK(r.reply.str == "edge");
  }
  SECTION("a wrong password never runs a command unauthenticated") {
    auto options = standaloneOptions(server);
    options.password = "wrong";
    options.breakerFailures = 2;
    auto client = RedisClient::create(loop.get(), options);
    RedisResult r = call(loop, *client, {"SET", "x", "1"}, 300 * kMillis);
    CHECK_FALSE(r.ok());
    CHECK((r.status == RedisStatus::kTimeout || r.status == RedisStatus::kBreakerOpen));
    CHECK(client->lastError().find("handshake") != std::string::npos);
    CHECK(server.cli("-a s3cret --no-auth-warning EXISTS x") == "0");
  }
}

TEST_CASE("redis client: EVALSHA, and EVAL after NOSCRIPT", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto client = RedisClient::create(loop.get(), standaloneOptions(server));
  auto script = makeRedisScript("echo", "return {KEYS[1], ARGV[1]}");
  CHECK(script->sha1() == server.cli("SCRIPT LOAD 'return {KEYS[1], ARGV[1]}'"));
  server.cli("SCRIPT FLUSH");

  RedisResult r = evalSync(loop, *client, script, {"k"}, {"a"});  // not loaded: NOSCRIPT -> EVAL
  REQUIRE(r.succeeded());
  CHECK(r.reply.elements[0].str == "k");
  CHECK(r.reply.elements[1].str == "a");
  CHECK(client->stats().noscript == 1);

  r = evalSync(loop, *client, script, {"k"}, {"b"});  // loaded by the EVAL: EVALSHA works
  CHECK(r.reply.elements[1].str == "b");
  CHECK(client->stats().noscript == 1);

  REQUIRE(call(loop, *client, {"SCRIPT", "FLUSH"}).ok());
  r = evalSync(loop, *client, script, {"k"}, {"c"});
  CHECK(r.reply.elements[1].str == "c");
  CHECK(client->stats().noscript == 2);

  // A script's own error is an error reply, not a transport failure, and is not retried.
  auto bad = makeRedisScript("bad", "return redis.call('INCR', KEYS[1])");
  REQUIRE(call(loop, *client, {"SET", "text", "abc"}).ok());
  r = evalSync(loop, *client, bad, {"text"}, {});
  CHECK(r.ok());
  CHECK(r.reply.isError());
}

TEST_CASE("redis client: reconnects after the server restarts, with backoff", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto options = standaloneOptions(server);
  options.backoffBase = 50 * kMillis;
  options.backoffMax = 400 * kMillis;
  options.breakerFailures = 1000;  // the breaker has its own test
  auto client = RedisClient::create(loop.get(), options);
  REQUIRE(call(loop, *client, {"SET", "k", "1"}).ok());

  server.kill();
  RedisResult r = call(loop, *client, {"GET", "k"}, 200 * kMillis);
  CHECK_FALSE(r.ok());
  // Down for 1.5 s: exponential backoff with full jitter (cap 400 ms) makes a handful of attempts,
  // not a connect per millisecond.
  loop.runFor(1500ms);
  uint64_t failures = client->stats().connectFailures;
  CHECK(failures >= 2);
  CHECK(failures <= 40);

  server.start();  // same port
  REQUIRE(loop.runUntil([&] { return client->connectedNodes() == 1; }, 3s));
  r = call(loop, *client, {"SET", "k", "2"});
  CHECK(r.succeeded());
  CHECK(client->stats().reconnects >= 1);
  CHECK(client->stats().disconnects == 1);

  // Commands issued while disconnected wait for the reconnect within their budget.
  server.kill();
  loop.runFor(30ms);  // the client sees the connection go
  bool done = false;
  client->command({"PING"}, [&](RedisResult& res) {
    r = res;
    done = true;
  }, 3 * kSeconds);
  loop.runFor(100ms);
  CHECK_FALSE(done);
  server.start();
  REQUIRE(loop.runUntil([&] { return done; }, 4s));
  CHECK(r.succeeded());
}

TEST_CASE("redis client: the breaker opens on failures, fails fast, and closes after a probe", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto options = standaloneOptions(server);
  options.breakerFailures = 3;
  options.breakerCooldown = 300 * kMillis;
  options.backoffBase = 20 * kMillis;
  options.backoffMax = 100 * kMillis;
  auto client = RedisClient::create(loop.get(), options);
  REQUIRE(call(loop, *client, {"PING"}).ok());
  CHECK(client->breakerState() == RedisBreakerState::kClosed);

  server.kill();
  // Connect failures (and timeouts) count; after 3 in a row the breaker opens.
  REQUIRE(loop.runUntil([&] { return client->breakerState() == RedisBreakerState::kOpen; }, 3s));
  CHECK(client->stats().breakerTrips == 1);
  CHECK(client->openBreakers() == 1);

  auto t0 = std::chrono::steady_clock::now();
  RedisResult r = call(loop, *client, {"GET", "k"}, 1 * kSeconds);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.status == RedisStatus::kBreakerOpen);
  CHECK(took < 50ms);  // fails fast, not after the 1 s budget
  CHECK(r.toError().retryable);
  CHECK(client->stats().breakerRejections >= 1);

  server.start();
  loop.runFor(350ms);  // cooldown passes: half-open, the next call is the probe
  REQUIRE(loop.runUntil([&] { return client->connectedNodes() == 1; }, 3s));
  r = call(loop, *client, {"PING"});
  CHECK(r.succeeded());
  CHECK(client->breakerState() == RedisBreakerState::kClosed);
  CHECK(call(loop, *client, {"PING"}).succeeded());
}

TEST_CASE("redis client: timeouts open the breaker and the stalled connection is replaced", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto options = standaloneOptions(server);
  options.breakerFailures = 3;
  options.breakerCooldown = 200 * kMillis;
  options.connectTimeout = 200 * kMillis;
  options.backoffBase = 20 * kMillis;
  options.backoffMax = 100 * kMillis;
  auto client = RedisClient::create(loop.get(), options);
  REQUIRE(call(loop, *client, {"PING"}).ok());
  server.pause();
  for (int i = 0; i < 3; i++) CHECK(call(loop, *client, {"PING"}, 30 * kMillis).status == RedisStatus::kTimeout);
  CHECK(client->breakerState() == RedisBreakerState::kOpen);
  CHECK(call(loop, *client, {"PING"}).status == RedisStatus::kBreakerOpen);
  server.resume();
  REQUIRE(loop.runUntil([&] {
    return client->connectedNodes() == 1 && client->breakerState() != RedisBreakerState::kOpen;
  }, 3s));
  CHECK(call(loop, *client, {"PING"}).succeeded());
  CHECK(client->breakerState() == RedisBreakerState::kClosed);
}

TEST_CASE("redis client: destruction with calls in flight calls each back once with kClosed", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto options = standaloneOptions(server);
  options.commandTimeout = 5 * kSeconds;
  auto client = RedisClient::create(loop.get(), options);
  REQUIRE(call(loop, *client, {"PING"}).ok());
  server.pause();  // replies never come while the client lives

  const int kN = 100;
  std::vector<int> calls(kN, 0);
  std::vector<RedisStatus> status(kN, RedisStatus::kOk);
  for (int i = 0; i < kN; i++) {
    client->command({"INCR", "c"}, [&, i](RedisResult& r) {
      calls[i]++;
      status[i] = r.status;
    });
  }
  bool batchDone = false;
  std::vector<RedisCommand> cmds;
  cmds.push_back(RedisCommand::of({"GET", "a"}));
  cmds.push_back(RedisCommand::of({"GET", "b"}));
  client->batch(std::move(cmds), [&](std::vector<RedisResult>& rs) {
    batchDone = rs.size() == 2 && rs[0].status == RedisStatus::kClosed && rs[1].status == RedisStatus::kClosed;
  });
  loop.runFor(20ms);  // on the wire now
  client.reset();
  for (int i = 0; i < kN; i++) {
    REQUIRE(calls[i] == 1);
    CHECK(status[i] == RedisStatus::kClosed);
  }
  CHECK(batchDone);
  server.resume();
  loop.runFor(50ms);
  for (int i = 0; i < kN; i++) CHECK(calls[i] == 1);
}

TEST_CASE("redis client: destroying the client inside its own callback is safe", "[redis]") {
  RedisServer server;
  TestLoop loop;
  auto client = RedisClient::create(loop.get(), standaloneOptions(server));
  int first = 0, others = 0;
  client->command({"PING"}, [&](RedisResult& r) {
    first++;
    client.reset();  // the other pipelined callbacks fire with kClosed, inside this reset
  });
  for (int i = 0; i < 10; i++) {
    client->command({"PING"}, [&](RedisResult& r) {
      others++;
      CHECK(r.status == RedisStatus::kClosed);
    });
  }
  REQUIRE(loop.runUntil([&] { return first == 1; }));
  loop.runFor(30ms);
  CHECK(others == 10);
  CHECK(client == nullptr);
}

TEST_CASE("redis client: loopback round trip and pipelined throughput figures", "[redis][bench]") {
  RedisServer server;
  TestLoop loop;
  auto client = RedisClient::create(loop.get(), standaloneOptions(server));
  REQUIRE(call(loop, *client, {"PING"}).ok());

  // Sequential round trips.
  std::vector<double> rtt;
  for (int i = 0; i < 2000; i++) {
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(call(loop, *client, {"PING"}).ok());
    rtt.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(rtt.begin(), rtt.end());

  // Pipelined: keep 1000 commands in flight.
  const int kTotal = 200000;
  int sent = 0, done = 0;
  std::function<void()> more;
  auto t0 = std::chrono::steady_clock::now();
  std::function<void(RedisResult&)> onDone = [&](RedisResult& r) {
    REQUIRE(r.ok());
    done++;
    if (sent < kTotal) {
      sent++;
      client->command({"INCR", "n"}, onDone);
    }
  };
  for (; sent < 1000; sent++) client->command({"INCR", "n"}, onDone);
  REQUIRE(loop.runUntil([&] { return done == kTotal; }, 30s));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  // Batches of 100.
  int batches = 0;
  const int kBatches = 2000;
  auto t1 = std::chrono::steady_clock::now();
  std::function<void(std::vector<RedisResult>&)> onBatch;
  auto sendBatch = [&] {
    std::vector<RedisCommand> cmds;
    for (int k = 0; k < 100; k++) cmds.push_back(RedisCommand::of({"INCR", "b"}));
    client->batch(std::move(cmds), onBatch);
  };
  int inFlight = 0;
  onBatch = [&](std::vector<RedisResult>& rs) {
    batches++;
    inFlight--;
    if (batches + inFlight < kBatches) {
      inFlight++;
      sendBatch();
    }
  };
  for (int k = 0; k < 10; k++) {
    inFlight++;
    sendBatch();
  }
  REQUIRE(loop.runUntil([&] { return batches == kBatches; }, 30s));
  double bsecs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();

  char line[256];
  snprintf(line, sizeof(line),
           "redis loopback: round trip p50 %.0f us p99 %.0f us; pipelined %.0f commands/s; "
           "batches of 100 %.0f commands/s",
           rtt[rtt.size() / 2], rtt[rtt.size() * 99 / 100], kTotal / secs, kBatches * 100 / bsecs);
  WARN(line);
  CHECK(client->stats().latencyCount > 0);
}

}  // namespace
}  // namespace sluice::redis
