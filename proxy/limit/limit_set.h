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
#include "limiter/admission.h"
#include "limiter/concurrency.h"
#include "limiter/gcra.h"
#include "limiter/sliding_window.h"
#include "proxy/config/config.h"
#include "proxy/http/header_map.h"

namespace sluice {

struct LimitRuleRuntime {
  const LimitRuleConfig* config = nullptr;
  std::shared_ptr<limiter::RateLimiter> rate;  // leaky bucket or sliding window
  limiter::GcraTablePtr gcra_table;
  limiter::SlidingWindowTablePtr window_table;
  std::shared_ptr<limiter::KeyedConcurrencyLimiter> concurrency;
  // Decision counters, for the admin API and metrics.
  std::atomic<uint64_t> allowed{0};
  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> delayed{0};
  std::atomic<uint64_t> degraded{0};
  std::atomic<uint64_t> shadow_rejected{0};
  std::atomic<uint64_t> skipped{0};  // requests without the key's value
};

// What the request offers to key functions: all read-only views valid during the limit phase.
struct LimitRequestView {
  const IpAddress* client_ip = nullptr;
  std::string_view route;
  std::string_view target;  // request-target (path + query)
  const HeaderMap* headers = nullptr;
};

class LimitSet {
 public:
  LimitSet(const Config& config, const LimitSet* previous);
  size_t size() const { return rules_.size(); }
  LimitRuleRuntime& rule(size_t i) { return *rules_[i]; }
  const LimitRuleRuntime& rule(size_t i) const { return *rules_[i]; }

  // The key hash of `rule` for this request; false when the request lacks the key's value and
  // the rule skips such requests.
  static bool keyFor(const LimitRuleConfig& rule, const LimitRequestView& req, uint64_t* key);

 private:
  std::vector<std::unique_ptr<LimitRuleRuntime>> rules_;
};

// "Mozilla/5.0 (X11) Chrome/120.0.6099.71" -> "mozilla/#.# (x##) chrome/#.#.#.#": one bucket per
// client family rather than per patch version, so rotating version strings buys nothing.
void normaliseUserAgent(std::string_view ua, std::string* out);

}  // namespace sluice
