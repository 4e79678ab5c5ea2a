#pragma once
// Async Redis client for one worker loop: hiredis on libuv, standalone or Redis Cluster.
//
// One RedisClient per worker (uv_loop_t), one connection per node. Every call and callback
// happens on that loop's thread. Commands are pipelined on the node's connection; a batch sends
// N commands at once and calls back once with N results in order. Each call has a deadline
// covering everything (waiting for a connection, redirects, NOSCRIPT fallback): when it passes
// the callback fires with kTimeout and any late reply is discarded. Every callback fires exactly
// once -- with a reply, a transport error, or kClosed when the client is destroyed first.
//
// Connections: AUTH (password, optional ACL username) and SELECT on connect, before any command
// is sent; reconnect with exponential backoff and full jitter; a per-node circuit breaker
// (breaker.h) fails calls fast while a node is down.
//
// Cluster: the slot map comes from CLUSTER SLOTS (at start, on MOVED, periodically). MOVED updates
// the map and resends; ASK resends once to the named node after ASKING without touching the map;
// at most maxRedirects hops. Multi-key commands and scripts must keep their keys in one slot:
// use a hash tag ("{member:42}:gcra", "{member:42}:window"); scripts with keys in different slots
// fail with kCrossSlot before anything is sent.
//
// Destruction: allowed with calls in flight, from any callback too; pending callbacks fire with
// kClosed inside the destructor (and must not expect the client to serve new calls). libuv handles
// are closed, so the loop must run once more afterwards to free them.
#include <uv.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/redis/breaker.h"
#include "core/redis/reply.h"
#include "core/redis/script.h"

namespace sluice::redis {

struct RedisEndpoint {
  std::string host;  // an IP address (hiredis resolves names with a blocking call: avoid them)
  uint16_t port = 6379;
};

struct RedisClientOptions {
  std::vector<RedisEndpoint> endpoints;  // standalone: the server; cluster: seed nodes
  bool cluster = false;
  std::string username;  // ACL user (Redis 6+); empty = AUTH <password> only
  std::string password;  // empty = no AUTH
  int database = 0;      // SELECT on connect when non-zero (standalone only)

  Nanos commandTimeout = 100 * kMillis;  // default deadline of a call
  Nanos connectTimeout = 1 * kSeconds;   // TCP connect + AUTH/SELECT
  Nanos backoffBase = 100 * kMillis;     // reconnect delay: random(0, min(max, base * 2^n))
  Nanos backoffMax = 5 * kSeconds;
  uint32_t breakerFailures = 5;          // consecutive failures that open a node's breaker
  Nanos breakerCooldown = 2 * kSeconds;
  uint32_t maxRedirects = 5;             // MOVED/ASK hops per command
  Nanos slotRefreshInterval = 30 * kSeconds;  // periodic CLUSTER SLOTS
  Nanos slotRefreshMinGap = 100 * kMillis;    // MOVED storms trigger at most one refresh per gap
  size_t maxQueuedPerNode = 100000;      // commands waiting for a node's connection

  const char* validate() const;  // nullptr when usable
};

struct RedisCommand {
  std::vector<std::string> args;
  RedisScriptPtr script;  // set by ofScript: args hold the EVALSHA form
  int keyIndex = -1;      // argument whose slot routes the command in a cluster; -1 = any node

  // args[1] is the key when there is one (GET, SET, INCR, HSET, EXPIRE, ...).
  static RedisCommand of(std::vector<std::string> args);
  static RedisCommand keyless(std::vector<std::string> args);
  static RedisCommand ofScript(const RedisScriptPtr& script, std::vector<std::string> keys,
                               std::vector<std::string> argv);
};

using RedisCallback = std::function<void(RedisResult& result)>;
using RedisBatchCallback = std::function<void(std::vector<RedisResult>& results)>;

// Counters for metrics, written on the owner's loop only; read them there (or accept torn reads).
struct RedisClientStats {
  uint64_t commands = 0;          // commands submitted (a batch of N counts N)
  uint64_t batches = 0;           // calls submitted (command() counts 1)
  uint64_t replies = 0;           // commands answered by a server, error replies included
  uint64_t errorReplies = 0;      // server error replies handed to callers
  uint64_t timeouts = 0;          // commands that hit their deadline
  uint64_t connectionLost = 0;    // commands failed because their connection died
  uint64_t breakerRejections = 0; // commands failed fast by an open breaker
  uint64_t breakerTrips = 0;      // closed/half-open -> open transitions, all nodes
  uint64_t connects = 0;          // connections established (handshake done)
  uint64_t connectFailures = 0;   // connect or handshake failures
  uint64_t reconnects = 0;        // connects after the first one, per node
  uint64_t disconnects = 0;       // established connections lost
  uint64_t moved = 0;
  uint64_t ask = 0;
  uint64_t noscript = 0;          // EVALSHA answered NOSCRIPT and resent as EVAL
  uint64_t slotRefreshes = 0;     // CLUSTER SLOTS maps applied
  // Call latency (submit -> callback) of calls that got replies: bucket i counts calls that took
  // under 2^i microseconds (the last bucket takes the rest).
  static constexpr size_t kLatencyBuckets = 24;
  std::array<uint64_t, kLatencyBuckets> latencyBuckets{};
  uint64_t latencyCount = 0;
  uint64_t latencySumMicros = 0;
};

class RedisClient;
using RedisClientPtr = std::unique_ptr<RedisClient>;

class RedisClient {
 public:
  // Starts connecting at once. `options.validate()` must pass.
  static RedisClientPtr create(uv_loop_t* loop, RedisClientOptions options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // timeout 0 = options.commandTimeout.
  void command(RedisCommand cmd, RedisCallback cb, Nanos timeout = 0);
  void command(std::vector<std::string> args, RedisCallback cb, Nanos timeout = 0) {
    command(RedisCommand::of(std::move(args)), std::move(cb), timeout);
  }
  // EVALSHA, falling back to EVAL on NOSCRIPT.
  void eval(const RedisScriptPtr& script, std::vector<std::string> keys,
            std::vector<std::string> argv, RedisCallback cb, Nanos timeout = 0) {
    command(RedisCommand::ofScript(script, std::move(keys), std::move(argv)), std::move(cb), timeout);
  }
  // N commands pipelined (grouped per node in a cluster), one callback with N results in order.
  // The deadline covers the whole batch.
  void batch(std::vector<RedisCommand> cmds, RedisBatchCallback cb, Nanos timeout = 0);

  const RedisClientStats& stats() const;
  // The worst breaker state over all nodes, and how many nodes have an open breaker.
  RedisBreakerState breakerState() const;
  size_t openBreakers() const;
  size_t nodeCount() const;
  size_t connectedNodes() const;
  // Cluster: node "host:port" that owns the slot in the current map ("" when unknown).
  std::string slotOwner(uint16_t slot) const;
  // Cluster: fetch CLUSTER SLOTS now (tests; MOVED and the periodic timer do it on their own).
  void refreshSlots();
  // The last connection-level problem seen ("127.0.0.1:6379: connect timeout"), for logs.
  std::string lastError() const;

  class Impl;

 private:
  explicit RedisClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::redis
