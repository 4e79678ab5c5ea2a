#pragma once
// Cluster scope in the proxy (docs/cluster.md): limit rules with `scope: cluster` and route sale
// gates, on one Redis shared by every instance.
//
// Per worker: one ClusterWorker (created on the worker's loop at its first cluster request,
// closed when the worker drains) owns the worker's RedisClient, the lease accounts of the
// lease-mode rules and their sync timer. Nothing here is shared between workers.
//
// In the limit phase (ClientConnection::limitPhase):
//   - exact-mode rules are charged first, in one pipelined batch within the smallest
//     redis_timeout of the request's rules; the phase suspends (never blocks the loop) and the
//     reply resumes it (ClientConnection::resumeAfterLimit);
//   - then admit() checks every rule of the route, cluster ones through limiterFor(): a lease
//     account, the exact outcome (whose refund is sent to Redis when a later rule refuses), or
//     the rule's fallback when Redis is away (fail_open: the local share, fail_closed: refuse).
// Before the content phase, saleGate() takes one unit of the item's stock (sale_take) and
// suspends the request for that round trip.
#include <functional>
#include <memory>
#include <string>

#include "limiter/concurrency.h"
#include "limiter/rate_limiter.h"
#include "proxy/server/phase_result.h"

namespace sluice {

class ClientConnection;
class MetricsRegistry;
class LimitSet;
struct Config;
struct RouteConfig;
struct LimitRuleRuntime;
struct LimitRequestView;
struct ClusterExchangeState;  // per request, defined in cluster_limits.cc

class ClusterPhase {
 public:
  // Sends the exact-mode rules' calls and returns kSuspended, or kContinue when the route has
  // none to send (or they were sent and answered already: the resumed pass).
  static PhaseResult startExact(ClientConnection& c, const RouteConfig& route, const LimitRequestView& view);
  // What admit() should charge for cluster-scope rule `idx` (keyed `key`) of this request.
  static limiter::RateLimiter* limiterFor(ClientConnection& c, int idx, const LimitRuleRuntime& rt, uint64_t key);
  // The gate admit() should use for cluster-scope concurrency rule `idx`: the worker's share of
  // slots held in Redis (concurrency_acquire with a TTL), or the fallback when Redis is away.
  static limiter::ConcurrencyGate* gateFor(ClientConnection& c, int idx, const LimitRuleRuntime& rt, uint64_t key);
  // The route's sale gate, before the content phase: kContinue, kAnswered (sold out, or Redis
  // away and fail_closed), or kSuspended (waiting on sale_take; resumeAfterSaleGate goes on).
  static PhaseResult saleGate(ClientConnection& c, const RouteConfig& route);
  // Cluster-wide single use of a redeemed challenge ticket (redis.share_risk): spend_once on
  // KEY_PREFIX "spent:{ID}" for ttl_ms. False when there is no Redis to ask (the caller answers
  // on its own); else `done` runs on the connection later, unless the client went away first.
  enum class SpendResult : uint8_t { kFirst, kAlreadySpent, kUnavailable };
  static bool spendOnce(ClientConnection& c, const std::string& id, int64_t ttl_ms,
                        std::function<void(ClientConnection&, SpendResult)> done);
  // The sluice_redis_* / sluice_cluster_* families, read at scrape time from every worker.
  static void registerMetrics(MetricsRegistry& registry);
  // GET /cluster (admin): per-worker Redis and lease figures.
  static std::string statusJson();
};

// Admin API: POST /sale/{item}/quota {"units":N}, POST /sale/{item}/return {"units":N},
// GET /sale/{item}. Runs on the control thread with a short blocking connection (the control
// loop carries no client traffic). Returns {status, JSON body}.
std::pair<int, std::string> saleAdmin(const Config& cfg, bool post, std::string_view item,
                                      std::string_view action, std::string_view body);

}  // namespace sluice
