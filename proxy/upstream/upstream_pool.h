#pragma once
// Per-worker side of an upstream: balancer state, idle keep-alive connections and the retry
// budget. Health is read from (and reported to) the process-wide UpstreamCluster.
#include <uv.h>

#include <memory>
#include <vector>

#include "core/metrics.h"
#include "proxy/upstream/upstream_cluster.h"
#include "proxy/upstream/upstream_connection.h"

namespace sluice {

class UpstreamPool : public std::enable_shared_from_this<UpstreamPool> {
 public:
  UpstreamPool(UpstreamClusterPtr cluster, uv_loop_t* loop);
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  UpstreamCluster& cluster() { return *cluster_; }
  const UpstreamConfig& config() const { return cluster_->config(); }

  // Chooses a server not in `tried` (a bitmask over server indexes; pools with more than 64
  // servers stop excluding past 64). Healthy servers first; when none is healthy, every untried
  // server is a candidate (Envoy's panic mode: better a guess than a certain 503). When every
  // server has been tried, all are candidates again (retries in a pool of one). -1 if none.
  int pick(uint64_t key_hash, uint64_t tried, Nanos now);

  // An idle connection to `server` if one is alive, else a new one that is connecting.
  UpstreamConnection* acquire(size_t server, UpstreamHandler* handler);
  // Called by the connection when its exchange ended.
  void release(UpstreamConnection* conn, bool reusable);
  // Called by a connection once its handles are closed, right before it is deleted.
  void onConnectionClosed(UpstreamConnection* conn);
  void closeIdle();
  // A reload replaced this pool: idle connections close now, busy ones close when released.
  // Each connection holds the pool alive until it is closed.
  void retire();
  bool retired() const { return retired_; }

  // Envoy-style retry budget: retries in flight stay under a share of active requests.
  bool tryStartRetry();
  void endRetry();

  size_t idleCount() const;
  size_t liveConnections() const { return live_; }
  // This worker's cell of sluice_upstream_pool_idle_connections: moved with every change to the
  // idle lists, so a retired pool and its successor add up without double counting.
  void setIdleGauge(GaugeShard g) { idle_gauge_ = g; }

 private:
  UpstreamClusterPtr cluster_;
  uv_loop_t* loop_;
  std::vector<std::vector<UpstreamConnection*>> idle_;  // per server, most recent last
  std::vector<int64_t> rr_current_;                     // smooth weighted round robin
  size_t rr_start_ = 0;
  size_t live_ = 0;
  bool retired_ = false;
  GaugeShard idle_gauge_;
  void idleChanged(int64_t d) {
    if (idle_gauge_.bound()) idle_gauge_.add(d);
  }
};

}  // namespace sluice
