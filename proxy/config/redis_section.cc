// The `redis:` section, a limit rule's cluster-scope keys and a route's `sale_gate:`
// (docs/cluster.md, docs/configuration.md). Secrets are read here and never logged.
#include "proxy/config/loader.h"
#include "proxy/config/redis_settings.h"

namespace sluice::config_detail {

void Loader::loadRedis(const Node& n, Config& cfg) {
  Mapping m = mapping(n, "redis",
                      {"endpoints", "cluster", "username", "password", "password_file", "db",
                       "command_timeout", "connect_timeout", "backoff_base", "backoff_max",
                       "breaker_failures", "breaker_cooldown", "expected_instances", "key_prefix",
                       "sync_lists", "lists_resync_interval", "share_risk", "share_min_score",
                       "share_interval", "spend_timeout"});
  if (!m.valid) return;
  redis_on_ = true;
  auto s = std::make_shared<RedisSettings>();
  if (auto v = m.get("endpoints")) {
    std::vector<Node> items;
    if (sequence(*v, m.child("endpoints"), &items, /*allow_scalar=*/true)) {
      for (size_t i = 0; i < items.size(); i++) {
        HostPort hp;
        if (readAddress(items[i], m.child("endpoints") + "[" + std::to_string(i) + "]", &hp))
          s->endpoints.emplace_back(hp.host, hp.port);
      }
      if (items.empty()) fail(*v, m.child("endpoints") + ": at least one endpoint is required");
    }
  } else {
    fail(n, "redis: missing required key 'endpoints' (e.g. [127.0.0.1:6379])");
  }
  if (auto v = m.get("cluster")) readBool(*v, m.child("cluster"), &s->cluster);
  if (auto v = m.get("username")) readString(*v, m.child("username"), &s->username);
  auto pw = m.get("password");
  auto pwf = m.get("password_file");
  if (pw && pwf) {
    fail(*pwf, "redis.password_file: give either password or password_file, not both");
  } else if (pw) {
    if (readString(*pw, m.child("password"), &s->password)) s->password_source = "inline";
  } else if (pwf) {
    std::string path, text;
    if (readString(*pwf, m.child("password_file"), &path) &&
        readFile(*pwf, m.child("password_file"), path, &text)) {
      s->password = trimAll(text);
      s->password_source = "file " + path;
      if (s->password.empty()) fail(*pwf, "redis.password_file: '" + path + "' is empty");
    }
  }
  if (!s->username.empty() && s->password.empty())
    fail(n, "redis: 'username' needs 'password' or 'password_file'");
  if (auto v = m.get("db")) readInt(*v, m.child("db"), 0, 15, &s->db);
  if (s->cluster && s->db != 0) fail(*m.get("db"), "redis.db: Redis Cluster has only database 0");
  if (auto v = m.get("command_timeout")) readDuration(*v, m.child("command_timeout"), &s->command_timeout);
  if (auto v = m.get("connect_timeout")) readDuration(*v, m.child("connect_timeout"), &s->connect_timeout);
  if (auto v = m.get("backoff_base")) readDuration(*v, m.child("backoff_base"), &s->backoff_base);
  if (auto v = m.get("backoff_max")) readDuration(*v, m.child("backoff_max"), &s->backoff_max);
  if (auto v = m.get("breaker_failures")) readInt(*v, m.child("breaker_failures"), 1, 1000, &s->breaker_failures);
  if (auto v = m.get("breaker_cooldown")) readDuration(*v, m.child("breaker_cooldown"), &s->breaker_cooldown);
  if (auto v = m.get("expected_instances"))
    readInt(*v, m.child("expected_instances"), 1, 100000, &s->expected_instances);
  if (auto v = m.get("key_prefix")) scalar(*v, m.child("key_prefix"), "a string", &s->key_prefix);
  if (auto v = m.get("sync_lists")) readBool(*v, m.child("sync_lists"), &s->sync_lists);
  if (auto v = m.get("lists_resync_interval"))
    readDuration(*v, m.child("lists_resync_interval"), &s->lists_resync_interval);
  if (auto v = m.get("share_risk")) readBool(*v, m.child("share_risk"), &s->share_risk);
  if (auto v = m.get("share_min_score")) readInt(*v, m.child("share_min_score"), 1, 100, &s->share_min_score);
  if (auto v = m.get("share_interval")) readDuration(*v, m.child("share_interval"), &s->share_interval);
  if (auto v = m.get("spend_timeout")) readDuration(*v, m.child("spend_timeout"), &s->spend_timeout);
  if (s->share_interval < 10 * kMillis) {
    if (auto v = m.get("share_interval")) fail(*v, "redis.share_interval: must be at least 10ms");
  }
  if (s->lists_resync_interval < 100 * kMillis) {
    if (auto v = m.get("lists_resync_interval"))
      fail(*v, "redis.lists_resync_interval: must be at least 100ms");
  }
  if (s->backoff_max < s->backoff_base)
    fail(n, "redis: backoff_max must not be shorter than backoff_base");
  cfg.redis = s;
}

bool Loader::loadLimitRuleScope(const Mapping& m, LimitRuleConfig& rule) {
  bool ok = true;
  if (auto v = m.get("scope")) {
    std::string sc;
    if (readEnum(*v, m.child("scope"), {"local", "cluster"}, &sc)) {
      rule.cluster_scope = sc == "cluster";
      if (rule.cluster_scope && !redis_on_) {
        fail(*v, m.child("scope") + ": scope 'cluster' needs the top-level 'redis:' section");
        ok = false;
      }
      if (rule.cluster_scope && rule.algorithm == LimitAlgorithm::kCircuitBreaker) {
        fail(*v, m.child("scope") + ": scope 'cluster' is for leaky_bucket, sliding_window and "
                                    "concurrency rules");
        ok = false;
      }
      if (rule.cluster_scope && rule.action == LimitAction::kDelay) {
        fail(*v, m.child("scope") + ": a cluster-scope rule cannot 'delay'");
        ok = false;
      }
    } else {
      ok = false;
    }
  }
  if (auto v = m.get("cluster_mode")) {
    std::string cm;
    if (readEnum(*v, m.child("cluster_mode"), {"lease", "exact"}, &cm)) rule.cluster_exact = cm == "exact";
  }
  if (auto v = m.get("sync_interval")) {
    if (readDuration(*v, m.child("sync_interval"), &rule.sync_interval) &&
        (rule.sync_interval < kMillis || rule.sync_interval > 10 * kSeconds)) {
      fail(*v, m.child("sync_interval") + ": expected 1ms..10s");
      ok = false;
    }
  }
  if (auto v = m.get("redis_timeout")) {
    if (readDuration(*v, m.child("redis_timeout"), &rule.redis_timeout) &&
        rule.redis_timeout > 10 * kSeconds) {
      fail(*v, m.child("redis_timeout") + ": at most 10s");
      ok = false;
    }
  }
  if (auto v = m.get("on_redis_down")) {
    std::string d;
    if (readEnum(*v, m.child("on_redis_down"), {"fail_open", "fail_closed"}, &d)) rule.fail_closed = d == "fail_closed";
  }
  for (const char* k : {"cluster_mode", "sync_interval", "redis_timeout", "on_redis_down"})
    if (m.get(k) && !rule.cluster_scope) {
      fail(*m.get(k), m.child(k) + ": only a rule with 'scope: cluster' takes '" + k + "'");
      ok = false;
    }
  return ok;
}

void Loader::loadRouteSaleGate(const Node& n, const std::string& path, RouteConfig& r) {
  Mapping m = mapping(n, path, {"item", "quota_key", "sold_out", "redis_timeout", "on_redis_down"});
  if (!m.valid) return;
  if (!redis_on_) {
    fail(n, path + ": a sale gate needs the top-level 'redis:' section");
    return;
  }
  auto g = std::make_shared<SaleGateConfig>();
  bool ok = true;
  Node item_node = m.get("item") ? *m.get("item") : Node("item");
  if (!loadLimitKeyPart(item_node, m.child("item"), &g->item)) ok = false;
  else if (g->item.source.empty()) {
    fail(item_node, m.child("item") + ": needs a source such as item, item=query:id or header:X-Item");
    ok = false;
  }
  if (auto v = m.get("quota_key")) {
    if (readString(*v, m.child("quota_key"), &g->quota_key) && g->quota_key.find("{ITEM}") == std::string::npos) {
      fail(*v, m.child("quota_key") + ": must contain {ITEM} (the item id; the braces make it the "
                                      "Redis Cluster hash tag)");
      ok = false;
    }
  }
  if (auto v = m.get("sold_out")) {
    Mapping so = mapping(*v, m.child("sold_out"), {"status", "body", "content_type"});
    if (auto s = so.get("status")) readInt(*s, so.child("status"), 200, 599, &g->status);
    if (auto b = so.get("body")) scalar(*b, so.child("body"), "a string", &g->body);
    if (auto c = so.get("content_type")) readString(*c, so.child("content_type"), &g->content_type);
  }
  if (auto v = m.get("redis_timeout")) readDuration(*v, m.child("redis_timeout"), &g->redis_timeout);
  if (auto v = m.get("on_redis_down")) {
    std::string d;
    if (readEnum(*v, m.child("on_redis_down"), {"fail_open", "fail_closed"}, &d)) g->fail_closed = d == "fail_closed";
  }
  if (ok) r.sale_gate = g;
}

}  // namespace sluice::config_detail
