#pragma once
// The proxy's metrics (docs/operations.md, "Metrics reference"): the families it registers and
// the per-worker handles each generation binds, so the data path records a request with a few
// relaxed stores into its own worker's cells and no lookup by name.
//
// Reloads: series are keyed by route / upstream name and bound when a Generation is built, so a
// route that stays keeps counting in the same series, one that comes back continues where it
// left off, and one that is removed keeps its last values (in-flight requests of the old
// generation still land there) until the process restarts. Per-server state (health, active,
// requests, failures) is read at scrape time from the current generation's servers.
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "core/metrics.h"
#include "proxy/config/config.h"

namespace sluice {

class Server;

// The code_class label values, indexed by statusClassIndex().
extern const char* const kStatusClasses[5];
// 1xx..5xx -> 0..4; anything outside 100..599 counts with the nearest class.
inline int statusClassIndex(int status) {
  int c = status / 100 - 1;
  return c < 0 ? 0 : (c > 4 ? 4 : c);
}

// The route label of requests answered before any route matched (bad requests, 404 no route).
// Route names cannot contain parentheses, so it never collides with a configured route.
extern const char* const kNoRouteLabel;

struct RouteMetrics {
  CounterShard requests[5];  // by status class
  HistogramShard duration;
  CounterShard request_body_bytes;
  CounterShard response_body_bytes;
};

struct UpstreamMetrics {
  HistogramShard response_duration;
  CounterShard retries;
  GaugeShard idle_connections;
  CounterShard refused[3];  // by PoolGate::Refusal - 1: max_active, adaptive, saturated
};

// Decisions of one limit rule (sluice_limit_decisions_total{rule,action}).
struct LimitRuleMetrics {
  CounterShard allowed;
  CounterShard rejected;
  CounterShard delayed;
  CounterShard degraded;
  CounterShard shadow_rejected;
  CounterShard skipped;  // requests without the key's value
};

// The action label values of sluice_limit_decisions_total, in LimitRuleMetrics order.
extern const char* const kLimitActions[6];

// What one worker records for one generation, bound to that worker's shard.
struct WorkerMetrics {
  std::vector<RouteMetrics> routes;        // same order as config->routes
  RouteMetrics unmatched;                  // route="(none)"
  std::vector<UpstreamMetrics> upstreams;  // same order as config->upstreams
  std::vector<LimitRuleMetrics> limits;    // same order as config->limit_rules
};

class ProxyMetrics {
 public:
  // One shard per thread that records: shard 0 is the control thread, data worker i is i + 1.
  // `server` (may be null, e.g. in tests) feeds the families read at scrape time.
  ProxyMetrics(size_t data_workers, Server* server);
  static size_t shardOf(int worker_id) { return worker_id < 0 ? 0 : static_cast<size_t>(worker_id) + 1; }

  MetricsRegistry& registry() { return registry_; }
  // One WorkerMetrics per shard for the routes and upstreams of `cfg`. Called when a Generation
  // is built (control thread); allocates only for names not seen before.
  std::vector<WorkerMetrics> bind(const Config& cfg);
  // Connection metrics outlive generations: each worker binds them once.
  CounterShard connectionsAccepted(size_t shard) const { return accepted_.shard(shard); }
  GaugeShard connectionsOpen(size_t shard) const { return open_.shard(shard); }
  // sluice_accept_paused_total: `fd_limit` false = max_connections reached, true = out of fds.
  CounterShard acceptPaused(size_t shard, bool fd_limit) const {
    return (fd_limit ? paused_fd_limit_ : paused_max_connections_).shard(shard);
  }

  std::string render() const { return registry_.render(); }
  // Sum over workers of one rule's decisions, `action` one of kLimitActions (admin API).
  uint64_t limitDecisions(const std::string& rule, const char* action);

 private:
  void addServerFamilies(Server* server);

  MetricsRegistry registry_;
  CounterFamily requests_;
  HistogramFamily request_duration_;
  CounterFamily request_bytes_;
  CounterFamily response_bytes_;
  HistogramFamily upstream_duration_;
  CounterFamily retries_;
  GaugeFamily pool_idle_;
  CounterFamily limit_decisions_;
  CounterFamily pool_refused_;
  Counter accepted_;
  Gauge open_;
  CounterFamily accept_paused_;
  Counter paused_max_connections_;
  Counter paused_fd_limit_;
};

}  // namespace sluice
