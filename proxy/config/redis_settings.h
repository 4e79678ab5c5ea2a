#pragma once
// The `redis:` section (cluster-scope limits and the sale gate share one Redis, standalone or
// Redis Cluster) and a route's `sale_gate:`. Parsed in redis_section.cc; docs/cluster.md.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "proxy/config/config.h"

namespace sluice {

struct RedisSettings {
  std::vector<std::pair<std::string, uint16_t>> endpoints;  // numeric IP, port
  bool cluster = false;
  std::string username;         // ACL user; never logged
  std::string password;         // inline, or from password_file; never logged
  std::string password_source;  // "inline", "file PATH": what GET /config may show
  int db = 0;
  Nanos command_timeout = 100 * kMillis;  // background syncs and admin calls
  Nanos connect_timeout = 1 * kSeconds;
  Nanos backoff_base = 100 * kMillis;
  Nanos backoff_max = 5 * kSeconds;
  uint32_t breaker_failures = 5;
  Nanos breaker_cooldown = 2 * kSeconds;
  // Instances sharing the budgets: a rule that fails open while Redis is away allows
  // limit / expected_instances (split again over this instance's workers).
  uint32_t expected_instances = 1;
  std::string key_prefix = "sluice:";
  // Run-time entries of the risk lists shared through Redis (proxy/cluster/risk_sync.h).
  bool sync_lists = false;
  Nanos lists_resync_interval = 10 * kSeconds;
  // Risk state shared between instances: entity scores and challenge ladders pushed on pub/sub
  // (every share_interval), and redeemed challenge tickets spent once cluster-wide.
  bool share_risk = false;
  int share_min_score = 30;
  Nanos share_interval = 50 * kMillis;
  Nanos spend_timeout = 50 * kMillis;  // the most a challenge redemption waits on Redis
};

// Flash-sale stock at the edge: each request on the route takes one unit of the item's quota
// (sale_take, atomic in Redis); when none is left the route answers `sold out` itself.
struct SaleGateConfig {
  LimitKeyPart item;              // where the item id comes from (default: the item path)
  std::string quota_key = "sale:{ITEM}:stock";  // {ITEM} is replaced by the item id
  int status = 200;               // the sold-out answer
  std::string body = "{\"sold_out\":true}";
  std::string content_type = "application/json";
  Nanos redis_timeout = 50 * kMillis;  // the most a checkout waits on Redis
  bool fail_closed = true;        // Redis away: answer `down_status` (never oversell) or let through
  int down_status = 503;

  std::string keyFor(std::string_view item_id) const {
    std::string k = quota_key;
    size_t p = k.find("{ITEM}");
    // The braces stay: {id} is the Redis Cluster hash tag, so an item's keys share a slot.
    if (p != std::string::npos) k.replace(p + 1, 4, item_id);
    return k;
  }
};

}  // namespace sluice
