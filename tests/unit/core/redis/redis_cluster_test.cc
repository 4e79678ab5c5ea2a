// The client against a real three-master Redis Cluster on loopback ports: CRC16 slots and hash
// tags, routing by the CLUSTER SLOTS map, MOVED after a slot migrates (map updated), ASK during a
// migration (map not updated), cross-slot scripts refused, and scripts on the right node.
#include "core/redis/client.h"
#include "core/redis/scripts.h"
#include "core/redis/slot.h"
#include "tests/unit/core/redis/redis_test_support.h"

namespace sluice::redis {
namespace {

using namespace testing;
using namespace std::chrono_literals;

TEST_CASE("redis cluster: CRC16 slots and hash tags", "[redis]") {
  CHECK(crc16Xmodem("123456789") == 0x31C3);  // the XMODEM check value the cluster spec quotes
  CHECK(keySlot("123456789") == 12739);
  CHECK(keySlot("{user1000}.following") == keySlot("{user1000}.followers"));
  CHECK(keySlot("foo{}{bar}") == keySlot("foo{}{bar}"));
  CHECK(hashTag("foo{}{bar}") == "foo{}{bar}");  // empty first tag: the whole key
  CHECK(hashTag("foo{{bar}}zap") == "{bar");
  CHECK(hashTag("foo{bar}{zap}") == "bar");
  CHECK(hashTag("{") == "{");
}

RedisClientOptions clusterOptions(RedisClusterFixture& cluster) {
  RedisClientOptions o;
  o.endpoints = cluster.seeds();
  o.cluster = true;
  o.commandTimeout = 2 * kSeconds;
  return o;
}

// Moves `slot` from server `from` to server `to` the way redis-cli --cluster reshard does;
// with keysFirst only the given keys move and the slot stays MIGRATING/IMPORTING.
void beginMigration(RedisClusterFixture& c, uint16_t slot, size_t from, size_t to) {
  std::string s = std::to_string(slot);
  REQUIRE(c.server(to).cli("CLUSTER SETSLOT " + s + " IMPORTING " + c.nodeId(from)) == "OK");
  REQUIRE(c.server(from).cli("CLUSTER SETSLOT " + s + " MIGRATING " + c.nodeId(to)) == "OK");
}
void migrateKey(RedisClusterFixture& c, const std::string& key, size_t from, size_t to) {
  REQUIRE(c.server(from).cli("MIGRATE 127.0.0.1 " + std::to_string(c.server(to).port()) + " '" + key + "' 0 5000") == "OK");
}
void finishMigration(RedisClusterFixture& c, uint16_t slot, size_t to) {
  std::string s = std::to_string(slot);
  std::string id = c.nodeId(to);
  for (size_t i = 0; i < 3; i++) REQUIRE(c.server(i).cli("CLUSTER SETSLOT " + s + " NODE " + id) == "OK");
}

TEST_CASE("redis cluster: routing, MOVED after a migration, ASK during one", "[redis]") {
  RedisClusterFixture cluster;
  TestLoop loop;
  auto client = RedisClient::create(loop.get(), clusterOptions(cluster));
  REQUIRE(loop.runUntil([&] { return client->stats().slotRefreshes >= 1 && client->connectedNodes() == 3; }));
  CHECK(client->nodeCount() == 3);

  // Keys spread over all three masters, written in one batch: no redirects with a fresh map.
  std::vector<RedisCommand> cmds;
  for (int i = 0; i < 300; i++) cmds.push_back(RedisCommand::of({"SET", "key:" + std::to_string(i), std::to_string(i)}));
  bool done = false;
  std::vector<RedisResult> results;
  client->batch(std::move(cmds), [&](std::vector<RedisResult>& rs) {
    results = std::move(rs);
    done = true;
  });
  REQUIRE(loop.runUntil([&] { return done; }));
  for (auto& r : results) REQUIRE(r.succeeded());
  CHECK(client->stats().moved == 0);
  for (size_t i = 0; i < 3; i++) CHECK(std::stoi(cluster.server(i).cli("DBSIZE")) > 50);
  CHECK(call(loop, *client, {"GET", "key:42"}).reply.str == "42");

  SECTION("MOVED: the map is updated and the command resent") {
    const std::string key = "key:7";
    uint16_t slot = keySlot(key);
    size_t from = cluster.ownerOf(slot), to = (from + 1) % 3;
    std::string before = client->slotOwner(slot);
    CHECK(before == "127.0.0.1:" + std::to_string(cluster.server(from).port()));
    beginMigration(cluster, slot, from, to);
    std::string keys = cluster.server(from).cli("CLUSTER GETKEYSINSLOT " + std::to_string(slot) + " 1000");
    std::istringstream ks(keys);
    for (std::string k; std::getline(ks, k);) if (!k.empty()) migrateKey(cluster, k, from, to);
    finishMigration(cluster, slot, to);

    RedisResult r = call(loop, *client, {"GET", key});
    REQUIRE(r.succeeded());
    CHECK(r.reply.str == "7");
    CHECK(client->stats().moved == 1);
    CHECK(client->slotOwner(slot) == "127.0.0.1:" + std::to_string(cluster.server(to).port()));
    // Later calls go straight to the new owner.
    CHECK(call(loop, *client, {"GET", key}).reply.str == "7");
    CHECK(client->stats().moved == 1);
  }

  SECTION("ASK: followed once with ASKING, the map stays") {
    const std::string key = "{ask}:moved", stays = "{ask}:stays";
    uint16_t slot = keySlot(key);
    REQUIRE(call(loop, *client, {"SET", key, "there"}).succeeded());
    REQUIRE(call(loop, *client, {"SET", stays, "here"}).succeeded());
    size_t from = cluster.ownerOf(slot), to = (from + 2) % 3;
    beginMigration(cluster, slot, from, to);
    migrateKey(cluster, key, from, to);

    RedisResult r = call(loop, *client, {"GET", key});
    REQUIRE(r.succeeded());
    CHECK(r.reply.str == "there");
    CHECK(client->stats().ask == 1);
    CHECK(client->slotOwner(slot) == "127.0.0.1:" + std::to_string(cluster.server(from).port()));
    CHECK(call(loop, *client, {"GET", stays}).reply.str == "here");  // still served by the source
    CHECK(client->stats().moved == 0);

    migrateKey(cluster, stays, from, to);
    finishMigration(cluster, slot, to);
    CHECK(call(loop, *client, {"GET", stays}).reply.str == "here");
    CHECK(client->stats().moved == 1);
  }
}

TEST_CASE("redis cluster: a stale map, scripts by hash tag, cross-slot refused", "[redis]") {
  RedisClusterFixture cluster;
  TestLoop loop;
  // Only one seed: the client learns the other masters from CLUSTER SLOTS.
  auto options = clusterOptions(cluster);
  options.endpoints.resize(1);
  auto client = RedisClient::create(loop.get(), options);

  // Commands sent before the map arrives wait for it.
  RedisResult r = call(loop, *client, {"SET", "{item:1}:stock", "2"});
  REQUIRE(r.succeeded());
  REQUIRE(loop.runUntil([&] { return client->connectedNodes() == 3; }));

  auto take = [&] { return evalSync(loop, *client, scripts::saleTake(), {"{item:1}:stock"}, {"1"}); };
  int64_t v[2];
  REQUIRE(scripts::integers(take().reply, v, 2));
  CHECK(v[0] == 1);
  REQUIRE(scripts::integers(take().reply, v, 2));
  CHECK(v[1] == 0);
  REQUIRE(scripts::integers(take().reply, v, 2));
  CHECK(v[0] == 0);

  auto two = makeRedisScript("two", "return redis.call('MSET', KEYS[1], ARGV[1], KEYS[2], ARGV[1])");
  r = evalSync(loop, *client, two, {"{m:1}:a", "{m:1}:b"}, {"x"});
  CHECK(r.succeeded());
  r = evalSync(loop, *client, two, {"a", "b"}, {"x"});  // different slots: refused before sending
  CHECK(r.status == RedisStatus::kCrossSlot);

  // A slot moves behind the client's back: MOVED, then a refresh learns the rest of the map.
  uint16_t slot = keySlot("{item:1}:stock");
  size_t from = cluster.ownerOf(slot), to = (from + 1) % 3;
  beginMigration(cluster, slot, from, to);
  migrateKey(cluster, "{item:1}:stock", from, to);
  finishMigration(cluster, slot, to);
  r = take();
  REQUIRE(r.succeeded());
  CHECK(client->stats().moved == 1);
  REQUIRE(loop.runUntil([&] { return client->stats().slotRefreshes >= 2; }));
}

}  // namespace
}  // namespace sluice::redis
