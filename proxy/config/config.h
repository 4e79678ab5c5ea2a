#pragma once
// The validated, immutable configuration. Parsing lives in config_loader.{h,cc}; the runtime
// only ever sees a `ConfigPtr` (shared_ptr<const Config>). A request holds the snapshot it started
// with, and a reload swaps the pointer.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/ip.h"
#include "proxy/cache/cache_key.h"
#include "proxy/cache/cache_policy.h"

namespace re2 {
class RE2;
}

namespace sluice {

struct RiskSettings;  // proxy/config/risk_settings.h: the `risk:` section and its RiskPolicy
struct LuaSettings;  // proxy/config/lua_config.h: the `lua:` section and its validated bundle
struct RedisSettings;   // proxy/config/redis_settings.h: the `redis:` section (cluster scope)
struct SaleGateConfig;  // proxy/config/redis_settings.h: a route's `sale_gate:`

struct ListenerConfig {
  std::string name;             // defaults to the address
  std::string host = "127.0.0.1";  // numeric IP; IPv6 without brackets
  uint16_t port = 8080;
  bool proxy_protocol = false;  // expect a PROXY v1/v2 header first on every connection
  int backlog = 511;
};

struct AdminConfig {
  std::string host = "127.0.0.1";  // numeric IP; IPv6 without brackets
  uint16_t port = 9901;
  bool enabled = true;
  std::string token;            // inline bearer token (redacted in GET /config)
  std::string token_file;       // or read from this file at load time (token then holds its
                                // trimmed content)
  CidrSet allow;                // peers allowed besides loopback
};

// Limits on what a client may send, and client-side timers.
struct ClientConfig {
  uint64_t max_uri_size = 8 * 1024;          // 414 above
  uint64_t max_header_size = 32 * 1024;      // 431 above (request line excluded, all header bytes)
  uint32_t max_headers = 100;                // 431 above
  uint64_t max_body_size = 8 * 1024 * 1024;  // 413 above; 0 = unlimited
  Nanos header_timeout = 10 * kSeconds;      // whole request head must arrive within; 408
  Nanos body_timeout = 30 * kSeconds;        // gap between two body reads; 408
  Nanos keepalive_timeout = 60 * kSeconds;   // idle keep-alive connection closed after
  Nanos send_timeout = 30 * kSeconds;        // a write to the client must make progress within
  uint32_t max_requests_per_connection = 10000;
  uint64_t buffer_size = 64 * 1024;          // high watermark before reading from the other side stops
  // Client connections one worker holds open before it stops accepting (the rest wait in the
  // listen backlog). 0 = auto: 3/4 of the open-file limit shared among the workers, leaving
  // the other quarter for upstream connections, logs and Redis.
  uint32_t max_connections = 0;
};

enum class BalanceKind { kRoundRobin, kLeastConn, kHash };

struct UpstreamServerConfig {
  std::string host;  // numeric IP as written; IPv6 without brackets ("::1")
  uint16_t port = 0;
  uint32_t weight = 1;
  // "host:port" with IPv6 bracketed ("[::1]:9080"), so it is also a valid Host header value.
  std::string address() const {
    if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
    return host + ":" + std::to_string(port);
  }
};

struct HealthCheckConfig {
  bool enabled = false;
  std::string path = "/healthz";
  std::string host;               // Host header; defaults to the server address
  Nanos interval = 2 * kSeconds;
  Nanos timeout = 1 * kSeconds;
  uint32_t rise = 2;              // consecutive successes to mark healthy
  uint32_t fall = 3;              // consecutive failures to mark unhealthy
  int expect_status_min = 200;    // healthy when status in [min, max]
  int expect_status_max = 399;
};

// A backstop limit on a pool's in-flight requests driven by observed latency (gradient, like
// Envoy's adaptive concurrency): between `floor` and `ceiling`, never the main limit.
struct AdaptiveConcurrencyConfig {
  bool enabled = false;
  uint32_t floor = 10;
  uint32_t ceiling = 1000;
  Nanos sample_window = 100 * kMillis;
  double percentile = 0.5;
  Nanos min_rtt_interval = 60 * kSeconds;
};

// The application tier reports how busy it is (a response header, e.g. the busy worker threads
// of a Tomcat pool, on proxied responses and on health-check probes); above the thresholds,
// routes of lower priority are shed first with 503.
struct SaturationConfig {
  std::string header;          // empty: off
  double capacity = 0;         // the header's value at 100 % (e.g. the pool's thread count)
  double shed_low = 0.80;      // routes with priority low are shed from this load
  double shed_normal = 0.95;   // normal from this load; high only at >= 1.0; critical never
  Nanos hold = 2 * kSeconds;   // a report older than this is ignored
};

struct UpstreamConfig {
  std::string name;
  BalanceKind balance = BalanceKind::kRoundRobin;
  // For kHash: "client_ip", "path", "uri", "header:NAME", "cookie:NAME", "query:NAME".
  std::string hash_key = "client_ip";
  std::vector<UpstreamServerConfig> servers;
  uint32_t keepalive_max_idle = 64;           // idle connections kept per worker per server
  Nanos keepalive_idle_timeout = 60 * kSeconds;
  Nanos connect_timeout = 1 * kSeconds;
  Nanos send_timeout = 10 * kSeconds;
  Nanos read_timeout = 30 * kSeconds;
  // Passive health: this many consecutive failures eject a server for `fail_timeout`.
  uint32_t max_fails = 3;
  Nanos fail_timeout = 10 * kSeconds;
  HealthCheckConfig health_check;
  // Retries: idempotent requests that never reached a server are retried on another one.
  uint32_t retries = 1;
  double retry_budget_percent = 20.0;  // retries in flight <= this share of active requests
  uint32_t retry_min_concurrent = 3;   // ...but always allow this many
  uint32_t max_active = 0;             // in-flight requests to the pool, all workers; 0 = no cap
  AdaptiveConcurrencyConfig adaptive;
  SaturationConfig saturation;
};

enum class PathMatchKind { kAny, kExact, kPrefix, kRegex };

// A route's micro-cache (docs/caching.md): what is stored, for how long, under which key.
struct RouteCacheConfig {
  cache::CachePolicy policy;
  cache::CacheKeySpec key;
  Nanos lock_timeout = 5 * kSeconds;  // a waiter goes upstream itself after this
  bool hot_only = false;              // cache only items the hot-item sketch marks hot
  bool serve_stale_on_error = true;   // within max_stale, on upstream error or open breaker
};

// The process-wide store all routes share (sized at start; a reload cannot resize it).
struct CacheConfig {
  uint64_t memory = 64 * 1024 * 1024;
  uint32_t shards = 16;
  std::string status_header = "X-Cache";  // HIT | MISS | STALE | COALESCED; "" = none
};

// An emergency lever (POST /degrade/{name} on the admin API): while on, the routes it names are
// answered at the edge — with their last cached response when they cache and `from_cache`, else
// with `status` / `body` — and never reach the application tier.
struct DegradeSwitchConfig {
  std::string name;
  std::vector<std::string> routes;
  int status = 200;
  std::string body;
  std::string content_type = "application/json";
  bool from_cache = true;
};

// Which routes go first when the application tier reports saturation.
enum class RoutePriority { kLow, kNormal, kHigh, kCritical };

struct RouteConfig {
  std::string name;
  // Host match: empty = any; "*.example.com" = suffix wildcard; otherwise exact (case-insensitive,
  // port ignored).
  std::vector<std::string> hosts;
  PathMatchKind path_kind = PathMatchKind::kAny;
  std::string path;                       // for exact/prefix, or the regex source
  std::shared_ptr<const re2::RE2> regex;  // compiled when path_kind == kRegex
  std::vector<std::string> methods;       // empty = any; upper-case
  std::string upstream;                   // name of an UpstreamConfig
  // Per-route overrides of the upstream's timeouts (0 = use the upstream's).
  Nanos connect_timeout = 0;
  Nanos send_timeout = 0;
  Nanos read_timeout = 0;
  std::optional<uint64_t> max_body_size;  // overrides client.max_body_size
  // A route may answer locally instead of proxying (used for /healthz of the proxy itself etc).
  int direct_status = 0;                  // >0: answer with this status and direct_body
  std::string direct_body;
  RoutePriority priority = RoutePriority::kNormal;
  std::shared_ptr<const RouteCacheConfig> cache;  // null: not cached
  std::vector<int> degrade_switches;              // indexes into Config::degrade_switches
  std::vector<std::string> limit_names;  // rule ids, in the order written
  std::vector<int> limits;                // indexes into Config::limit_rules
  // Risk phase (`risk: {profile, class}` or `risk: off`): the ladder profile ("" = default) and
  // the route class the behaviour tracker sees (risk::RouteClass; page unless configured).
  bool risk_enabled = true;
  std::string risk_profile;
  uint8_t risk_class = 1;  // risk::RouteClass::kPageView
  std::shared_ptr<const SaleGateConfig> sale_gate;  // null: no flash-sale stock gate
};

// Limit rules (docs/limiting.md). A rule's key is one part or several (a composite key such as
// member + item); each part names where its value comes from.
enum class LimitKeyKind {
  kIp,         // client IP (after trusted proxies); IPv6 grouped by `ipv6_prefix`
  kUserAgent,  // User-Agent, lower-cased with version numbers dropped
  kMember,     // `source` (default cookie:member)
  kDevice,     // `source` (default cookie:device)
  kItem,       // `source` (path:REGEX with one capture, query:NAME or header:NAME)
  kRoute,      // the route name: one key per interface
  kHeader,     // header:NAME
  kCookie,     // cookie:NAME
  kQuery,      // query:NAME
  kGlobal,     // one key for everything the rule sees
  kUpstream,   // the route's upstream pool name (circuit breakers per pool)
  kLua,        // lua:NAME, the key a rewrite-phase policy set (sluice.limit.set_key)
};

struct LimitKeyPart {
  LimitKeyKind kind = LimitKeyKind::kIp;
  std::string source;  // "cookie:NAME", "header:NAME", "query:NAME", "path:REGEX", "jwt:CLAIM",
                       // "lua:NAME"
  std::shared_ptr<const re2::RE2> path_regex;  // for path: sources
  bool default_item = false;  // the default item pattern: matched without RE2 (limit_set.h)
};

enum class LimitAlgorithm { kLeakyBucket, kSlidingWindow, kConcurrency, kCircuitBreaker };
enum class LimitAction {
  kReject,    // answer `status` (429) with Retry-After (and RateLimit headers)
  kDelay,     // leaky bucket: hold the request up to `max_delay`, then forward; beyond, reject
  kDegrade,   // answer the configured fallback body with `status` (200 by default), or the last
              // good cached response of a GET when the route caches (`degrade_from_cache`)
  kShadow,    // count and log only
  kRedirect,  // answer `status` (302) with Location: `location` (a queue or sold-out page)
};

enum class RateLimitHeaders {
  kOff,
  kDraft,   // RateLimit-Policy / RateLimit (IETF httpapi ratelimit-headers, structured form)
  kLegacy,  // RateLimit-Limit / RateLimit-Remaining / RateLimit-Reset (the older draft)
};

// An item with its own limit instead of the rule's default (`items:` of an item-keyed rule).
struct LimitItemOverride {
  std::string item;
  uint64_t requests = 0;  // leaky bucket
  Nanos period = kSeconds;
  uint32_t burst = 0;
  uint64_t limit = 0;     // sliding window
};

// A circuit breaker rule's numbers (algorithm: circuit_breaker; Sentinel's degrade rule).
struct BreakerRuleConfig {
  bool slow_calls = false;       // strategy: slow-call ratio instead of error ratio
  double threshold = 0.5;        // bad-call ratio that opens it
  Nanos slow_call = kSeconds;    // a call slower than this is bad (slow_calls)
  uint32_t min_requests = 10;
  Nanos window = 10 * kSeconds;  // statistics window
  Nanos cooldown = 5 * kSeconds;
  uint32_t half_open_probes = 1;
};

struct LimitRuleConfig {
  std::string id;
  std::vector<LimitKeyPart> key;
  std::string key_signature;  // canonical key definition: state survives a reload while equal
  LimitAlgorithm algorithm = LimitAlgorithm::kLeakyBucket;
  uint64_t requests = 0;      // leaky bucket: rate = requests per period
  Nanos period = kSeconds;
  uint32_t burst = 0;
  uint32_t delay = 0;         // nginx delay=N
  bool nodelay = false;
  uint64_t limit = 0;         // sliding window: requests per window
  Nanos window = 60 * kSeconds;
  uint32_t max_active = 0;    // concurrency: in-flight requests per key
  LimitAction action = LimitAction::kReject;
  int status = 429;
  std::string body;
  std::string content_type = "application/json";
  Nanos max_delay = 5 * kSeconds;
  bool count_rejected = false;
  uint64_t memory = 16 * 1024 * 1024;
  bool skip_missing = true;   // a request without the key's value skips the rule...
  std::string fallback_key;   // ...unless a fallback key is named
  int ipv6_prefix = 64;
  RateLimitHeaders rate_limit_headers = RateLimitHeaders::kDraft;
  bool nginx_resolution = false;  // `resolution: nginx`: nginx limit_req's ms integer arithmetic
  std::string location;           // redirect target
  std::vector<LimitItemOverride> items;
  bool only_hot = false;          // apply only to items the hot-item sketch marks hot
  BreakerRuleConfig breaker;
  // degrade: answer a GET with the route's last good cached response when it is at most this
  // old (`degrade_from_cache: 30s`); no entry -> the rule's body. 0 = never from the cache.
  Nanos degrade_from_cache = 0;
  // Cluster scope (docs/cluster.md): the budget is shared by every instance through `redis:`.
  bool cluster_scope = false;
  bool cluster_exact = false;          // cluster_mode: exact (a round trip per request), else lease
  Nanos sync_interval = 50 * kMillis;  // lease mode: background refill/report period
  Nanos redis_timeout = 5 * kMillis;   // exact mode: the most a request waits on Redis
  bool fail_closed = false;            // on_redis_down: fail_closed, else fail_open (local share)
};

// Automatic hot-item detection (limits.hot_items): a heavy-hitter sketch over a sliding window.
struct HotItemsConfig {
  bool enabled = false;
  LimitKeyPart source;       // where the item id comes from (the `item` key's default)
  Nanos window = 10 * kSeconds;
  uint32_t sub_windows = 5;
  double hot_rate = 100.0;   // requests per second at which an item is hot
  uint32_t top_k = 32;
};

// Bearer tokens whose claims can key limits (`jwt:CLAIM` sources). With a key configured the
// signature (HS256 / RS256) and exp/nbf are verified and a bad token counts as no token; without
// one, claims are read unverified (fine for grouping, not for trust: see docs/limiting.md).
struct JwtConfig {
  std::string token_source = "header:authorization";  // "header:NAME" (Bearer) or "cookie:NAME"
  std::string hs256_secret;                            // inline or from hs256_secret_file
  std::string rs256_public_key_pem;                    // read from rs256_public_key_file
  Nanos leeway = 30 * kSeconds;
  bool verify() const { return !hs256_secret.empty() || !rs256_public_key_pem.empty(); }
};

struct AccessLogConfig {
  std::string target = "stdout";  // "stdout", "stderr", "off" or a file path
  // The decision log for tuning: access-log lines of requests some rule, the risk phase or a
  // switch decided on (limit, shadow, risk, pool, cache...), sampled, in a file of their own.
  std::string decisions_target = "off";
  double decision_sample = 1.0;  // share of such requests written, 0..1
};

struct Config {
  std::string source_path;  // the file it was loaded from
  std::string hash;         // hex SHA-256 of the file bytes, shown by the admin API
  // Identity (device, inode, size, mtime) of every other file the load read: secrets, risk
  // lists, GeoIP databases. A reload whose YAML is byte-identical must still take a database
  // replaced by rename, so "unchanged" compares this too.
  std::string inputs_stamp;
  int workers = 0;          // resolved: "auto" becomes the core count
  std::vector<ListenerConfig> listeners;
  AdminConfig admin;
  ClientConfig client;
  CidrSet trusted_proxies;  // peers whose X-Forwarded-For / X-Real-IP is believed
  std::string request_id_header = "X-Request-Id";
  bool trace_start = false;  // start a W3C traceparent when the client sent none
  Nanos drain_timeout = 10 * kSeconds;
  // RLIMIT_NOFILE soft limit sluice sets for itself (nginx: worker_rlimit_nofile). 0 = auto:
  // raise it to the hard limit, as a default soft limit of 1024 caps a proxy far too low.
  uint64_t max_open_files = 0;
  std::string error_log = "stderr";
  std::string log_level = "info";
  AccessLogConfig access_log;
  std::vector<UpstreamConfig> upstreams;
  std::vector<RouteConfig> routes;
  std::vector<LimitRuleConfig> limit_rules;
  HotItemsConfig hot_items;
  JwtConfig jwt;
  CacheConfig cache;
  std::vector<DegradeSwitchConfig> degrade_switches;
  std::string pid_file;  // written at start, removed at exit; `sluice -s` signals through it
  // `reload:`: also reload when the config file or a policy file changes on disk, once the
  // writes have been quiet for `debounce` (an editor's save, a deploy's several files).
  bool reload_watch = false;
  Nanos reload_debounce = 500 * kMillis;
  // Scalper risk scoring (`risk:`); null when the section is absent or `enabled: false`.
  std::shared_ptr<const RiskSettings> risk;
  // Lua policies (`lua:` + routes' `policies:`), validated at load; null when there are none.
  std::shared_ptr<const LuaSettings> lua;
  // Shared state on Redis (`redis:`); null when the section is absent.
  std::shared_ptr<const RedisSettings> redis;

  const UpstreamConfig* findUpstream(const std::string& name) const {
    for (const auto& u : upstreams)
      if (u.name == name) return &u;
    return nullptr;
  }
};

using ConfigPtr = std::shared_ptr<const Config>;

}  // namespace sluice
