#pragma once
// Upstream pools, split by who shares what:
//  - UpstreamCluster: process-wide (all workers), built once per config generation. Holds each
//    server's health (atomics written by any worker's passive checks and by the active checker)
//    and the immutable consistent-hash ring.
//  - UpstreamPool (upstream_pool.h): per worker. Balancer cursor, idle keep-alive connections,
//    retry budget. Never touched by another thread.
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"
#include "proxy/config/config.h"
#include "proxy/upstream/pool_gate.h"

namespace sluice {

struct ServerState {
  UpstreamServerConfig config;
  std::string address;  // "host:port", for logs and headers
  sockaddr_storage sockaddr{};
  std::atomic<uint32_t> consecutive_fails{0};
  std::atomic<int64_t> ejected_until{0};  // monotonic ns; passive health
  std::atomic<bool> healthy{true};        // active health checks
  std::atomic<int32_t> active{0};         // requests in flight, all workers (least_conn)
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> failures{0};
  // Active checker bookkeeping: only the checker's thread touches these.
  uint32_t check_ok_streak = 0;
  uint32_t check_fail_streak = 0;

  bool available(Nanos now) const {
    return healthy.load(std::memory_order_relaxed) &&
           ejected_until.load(std::memory_order_relaxed) <= now;
  }
};

class UpstreamCluster {
 public:
  // Servers also present in `previous` (same address) share its ServerState.
  explicit UpstreamCluster(const UpstreamConfig& config, const UpstreamCluster* previous = nullptr);
  const UpstreamConfig& config() const { return config_; }
  size_t size() const { return servers_.size(); }
  ServerState& server(size_t i) { return *servers_[i]; }
  const ServerState& server(size_t i) const { return *servers_[i]; }

  // Passive health: a success clears the streak; max_fails in a row ejects for fail_timeout.
  void reportSuccess(size_t i);
  void reportFailure(size_t i, Nanos now);

  // Consistent hash: the first server clockwise from `hash` that passes `ok(index)`.
  template <typename Pred>
  int ringLookup(uint64_t hash, Pred ok) const;

  std::atomic<int64_t> active_requests{0};
  std::atomic<int64_t> retries_in_flight{0};
  // max_active, adaptive concurrency and saturation shedding (carried over a reload).
  PoolGate& gate() { return *gate_; }
  const PoolGate& gate() const { return *gate_; }

 private:
  UpstreamConfig config_;
  std::vector<std::shared_ptr<ServerState>> servers_;
  std::vector<std::pair<uint64_t, uint32_t>> ring_;  // (point, server index), sorted
  std::unique_ptr<PoolGate> gate_;
};

template <typename Pred>
int UpstreamCluster::ringLookup(uint64_t hash, Pred ok) const {
  if (ring_.empty()) return -1;
  size_t n = ring_.size();
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (ring_[mid].first < hash) lo = mid + 1;
    else hi = mid;
  }
  for (size_t k = 0; k < n; k++) {
    const auto& p = ring_[(lo + k) % n];
    if (ok(p.second)) return static_cast<int>(p.second);
  }
  return -1;
}

using UpstreamClusterPtr = std::shared_ptr<UpstreamCluster>;

}  // namespace sluice
