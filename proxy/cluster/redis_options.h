#pragma once
// The `redis:` section as the async client's options (cluster limits, list sync).
#include "core/redis/client.h"
#include "proxy/config/redis_settings.h"

namespace sluice {

inline redis::RedisClientOptions redisClientOptions(const RedisSettings& s) {
  redis::RedisClientOptions o;
  for (const auto& [h, p] : s.endpoints) o.endpoints.push_back({h, p});
  o.cluster = s.cluster;
  o.username = s.username;
  o.password = s.password;
  o.database = s.db;
  o.commandTimeout = s.command_timeout;
  o.connectTimeout = s.connect_timeout;
  o.backoffBase = s.backoff_base;
  o.backoffMax = s.backoff_max;
  o.breakerFailures = s.breaker_failures;
  o.breakerCooldown = s.breaker_cooldown;
  return o;
}

}  // namespace sluice
