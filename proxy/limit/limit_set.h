#pragma once
// The limit phase's process-wide state for one config generation: one runtime per rule
// (limiter/ algorithm + its byte-bounded table), shared by every worker. A reload builds a new
// LimitSet that takes over the tables of rules whose id, key and algorithm are unchanged, so
// buckets, quotas and in-flight counts survive it.
#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/ip.h"
#include "core/jwt.h"
#include "core/uninit_array.h"
#include "limiter/admission.h"
#include "limiter/circuit_breaker.h"
#include "limiter/concurrency.h"
#include "limiter/gcra.h"
#include "limiter/heavy_hitters.h"
#include "limiter/sliding_window.h"
#include "proxy/config/config.h"
#include "proxy/http/header_map.h"

namespace sluice {

struct LimitRuleRuntime {
  const LimitRuleConfig* config = nullptr;
  std::shared_ptr<limiter::RateLimiter> rate;  // leaky bucket or sliding window: one of
  std::shared_ptr<limiter::GcraLimiter> gcra;  //   these two, by algorithm
  std::shared_ptr<limiter::SlidingWindowLimiter> window;
  limiter::GcraTablePtr gcra_table;
  limiter::SlidingWindowTablePtr window_table;
  std::shared_ptr<limiter::KeyedConcurrencyLimiter> concurrency;
  // Items with their own limit (`items:`), by hash64 of the item id; same table as `rate`.
  struct ItemLimit {
    uint64_t item_hash;
    std::shared_ptr<limiter::RateLimiter> rate;
  };
  std::vector<ItemLimit> item_limits;
  // circuit_breaker rules: one breaker per route (key route, indexed like config.routes) or per
  // upstream pool (key upstream, indexed like config.upstreams).
  std::vector<std::unique_ptr<limiter::CircuitBreaker>> breakers;
  // The admin API's override of this rule id's mode (Controls; RuleModeOverride values).
  const std::atomic<uint8_t>* mode_override = nullptr;

  // The limiter for a request whose item hashes to `item_hash` (the rule's own, or the item's).
  limiter::RateLimiter* rateFor(uint64_t item_hash) const {
    for (const auto& il : item_limits)
      if (il.item_hash == item_hash) return il.rate.get();
    return rate.get();
  }
  // Keys holding state right now (non-idle buckets and windows, keys with requests in flight).
  // Scans the table: for scrapes and the admin API, not the data path.
  size_t liveKeys(Nanos now) const;
  // The rule's key table counters: new keys, idle (lossless) and active evictions, refusals.
  // An active eviction forgot a live bucket: the table is too small for the keys it sees. Zeros
  // for rules without a table; they restart when a reload builds a new table.
  limiter::KeyTableStats tableStats() const;
  // Decision counters are metrics series (ProxyMetrics, sluice_limit_decisions_total), bound per
  // worker and keyed by rule id, so they survive reloads and cost no shared cache line.
};

// What the request offers to key functions: all read-only views valid during the limit phase.
struct LimitRequestView {
  const IpAddress* client_ip = nullptr;
  std::string_view route;
  std::string_view target;  // request-target (path + query)
  const HeaderMap* headers = nullptr;
  std::string_view upstream;  // the route's upstream pool name ("" for direct routes)
  // jwt:CLAIM sources: the verifier and its config; the token is decoded at most once per request.
  const JwtVerifier* jwt = nullptr;
  const JwtConfig* jwt_config = nullptr;
  int64_t now_unix = 0;
  mutable int jwt_state = 0;  // 0 not tried, 1 decoded, -1 absent or invalid
  mutable std::string jwt_claims;
  mutable std::string scratch;  // a claim's value while it is hashed
  // Source values already looked up for this request (see LimitSet::sourceValue).
  struct CachedSource {
    std::string_view source;
    std::string_view value;
    bool found;
  };
  // lua:NAME sources: the keys the route's rewrite-phase policies set (sluice.limit.set_key).
  const std::vector<std::pair<std::string, std::string>>* lua_keys = nullptr;
  static constexpr uint8_t kCacheSlots = 6;
  mutable UninitArray<CachedSource, kCacheSlots> cache;  // [0, cached) are set
  mutable uint8_t cached = 0;
};

class LimitSet {
 public:
  LimitSet(const Config& config, const LimitSet* previous);
  size_t size() const { return rules_.size(); }
  LimitRuleRuntime& rule(size_t i) { return *rules_[i]; }
  const LimitRuleRuntime& rule(size_t i) const { return *rules_[i]; }

  // The key hash of `rule` for this request; false when the request lacks the key's value and
  // the rule skips such requests. `item_hash` (optional) gets hash64 of the item part's value
  // (0 when the key has no item part or the item was missing).
  static bool keyFor(const LimitRuleConfig& rule, const LimitRequestView& req, uint64_t* key,
                     uint64_t* item_hash = nullptr);
  // The value of a source ("header:X", "cookie:X", "query:X", "path:RE", "jwt:CLAIM"); false
  // if the request has none (or it is empty).
  static bool sourceValue(const LimitKeyPart& part, const LimitRequestView& req, std::string_view* out);
  static bool sourceValueUncached(const LimitKeyPart& part, const LimitRequestView& req,
                                  std::string_view* out);

  // Hot-item detection (limits.hot_items), or null. Carried over reloads while its numbers stay.
  limiter::HeavyHitterSketch* hotItems() const { return hot_items_.get(); }
  const JwtVerifier* jwt() const { return jwt_.get(); }

 private:
  std::vector<std::unique_ptr<LimitRuleRuntime>> rules_;
  std::shared_ptr<limiter::HeavyHitterSketch> hot_items_;
  HotItemsConfig hot_items_config_;
  JwtVerifierPtr jwt_;
  // Cluster-scope rules' local-share numbers (their limiters' params; docs/cluster.md).
  std::vector<std::unique_ptr<LimitRuleConfig>> share_configs_;
};

// "Mozilla/5.0 (X11) Chrome/120.0.6099.71" -> "mozilla/#.# (x##) chrome/#.#.#.#": one bucket per
// client family rather than per patch version, so rotating version strings buys nothing.
void normaliseUserAgent(std::string_view ua, std::string* out);
// The same without BMI2 (what CPUs without PEXT run; normaliseUserAgent picks at start-up).
void normaliseUserAgentPortable(std::string_view ua, std::string* out);
// hash64 of the normalised UA, through a per-thread cache keyed by the raw bytes' hash.
uint64_t userAgentKey(std::string_view ua);

// ^/(?:api/)?items?/([^/?]+) by hand: the default item source, matched per request by every
// item rule and by hot-item detection (RE2 cost ~800 instructions a match here).
bool matchDefaultItemPath(std::string_view path, std::string_view* id);

}  // namespace sluice
