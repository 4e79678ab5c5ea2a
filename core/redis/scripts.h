#pragma once
// The Lua scripts cluster-scope features run (core/redis/scripts/*.lua, embedded at build time;
// each file's header states its KEYS/ARGV/return contract, docs/cluster.md summarises them).
// Every script reads the time with redis.call('TIME'), never an instance's clock.
//
// In a Redis Cluster every script touches exactly one key, so any key works; callers that run
// several scripts for one entity should still give its keys one hash tag ("{member:42}:...") so
// a batch for the entity goes to one node.
#include <cstdint>
#include <vector>

#include "core/redis/reply.h"
#include "core/redis/script.h"

namespace sluice::redis::scripts {

const RedisScriptPtr& gcra();                // {allowed, remaining, retry_after_us, reset_after_us}
const RedisScriptPtr& slidingWindow();       // {allowed, remaining, retry_after_ms, window_end_ms}
const RedisScriptPtr& leaseTake();           // {granted, window_end_ms, used, now_ms}
const RedisScriptPtr& concurrencyAcquire();  // {granted, total, mine}
const RedisScriptPtr& concurrencyRelease();  // {mine}
const RedisScriptPtr& saleTake();            // {taken, remaining}  (remaining -1: no quota)
const RedisScriptPtr& saleReturn();          // remaining           (-1: no quota)
const RedisScriptPtr& spendOnce();           // {first 1|0, ttl_ms}

std::vector<RedisScriptPtr> all();

// Reads a script's integer array reply into out[0..n); false when it is not one (a server error
// reply included), so callers apply their rule's Redis-failure policy.
bool integers(const RedisReply& reply, int64_t* out, size_t n);

}  // namespace sluice::redis::scripts
