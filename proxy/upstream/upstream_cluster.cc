#include "proxy/upstream/upstream_cluster.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "core/hash.h"
#include "core/log.h"

namespace sluice {

namespace {
// Points per unit of weight on the ring: enough that removing one of ten servers moves ~10% of
// keys, few enough that the ring stays in cache.
constexpr int kRingPointsPerWeight = 160;

bool toSockaddr(const std::string& host, uint16_t port, sockaddr_storage* out) {
  memset(out, 0, sizeof(*out));
  auto* s4 = reinterpret_cast<sockaddr_in*>(out);
  if (inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    return true;
  }
  auto* s6 = reinterpret_cast<sockaddr_in6*>(out);
  std::string h = host;
  if (h.size() > 2 && h.front() == '[') h = h.substr(1, h.size() - 2);
  if (inet_pton(AF_INET6, h.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    return true;
  }
  return false;
}
}  // namespace

UpstreamCluster::UpstreamCluster(const UpstreamConfig& config, const UpstreamCluster* previous)
    : config_(config) {
  for (const auto& sc : config_.servers) {
    std::shared_ptr<ServerState> kept;
    if (previous)
      for (const auto& s : previous->servers_)
        if (s->address == sc.address()) kept = s;
    if (kept && kept->config.weight == sc.weight) {
      servers_.push_back(std::move(kept));  // health and counters carry over
      continue;
    }
    auto s = std::make_shared<ServerState>();
    if (kept) {
      // A new weight: fresh state (the old one is still read by in-flight requests), same health.
      s->healthy.store(kept->healthy.load());
      s->ejected_until.store(kept->ejected_until.load());
    }
    s->config = sc;
    s->address = sc.address();
    if (!toSockaddr(sc.host, sc.port, &s->sockaddr))
      LOG_ERROR("upstream %s: server %s is not a numeric address", config_.name.c_str(),
                s->address.c_str());
    servers_.push_back(std::move(s));
  }
  for (uint32_t i = 0; i < servers_.size(); i++) {
    int points = kRingPointsPerWeight * static_cast<int>(std::max<uint32_t>(1, servers_[i]->config.weight));
    for (int p = 0; p < points; p++) {
      std::string key = servers_[i]->address + "-" + std::to_string(p);
      ring_.emplace_back(hash64(key), i);
    }
  }
  std::sort(ring_.begin(), ring_.end());
  gate_ = std::make_unique<PoolGate>(config_, previous ? previous->gate_.get() : nullptr,
                                     SteadyClock::monotonicNanos());
}

void UpstreamCluster::reportSuccess(size_t i) {
  auto& s = *servers_[i];
  if (s.consecutive_fails.load(std::memory_order_relaxed) != 0)
    s.consecutive_fails.store(0, std::memory_order_relaxed);
}

void UpstreamCluster::reportFailure(size_t i, Nanos now) {
  auto& s = *servers_[i];
  s.failures.fetch_add(1, std::memory_order_relaxed);
  if (config_.max_fails == 0) return;
  uint32_t fails = s.consecutive_fails.fetch_add(1, std::memory_order_relaxed) + 1;
  if (fails >= config_.max_fails) {
    s.ejected_until.store(now + config_.fail_timeout, std::memory_order_relaxed);
    s.consecutive_fails.store(0, std::memory_order_relaxed);
    LOG_WARN("upstream %s: server %s ejected for %lldms after %u consecutive failures",
             config_.name.c_str(), s.address.c_str(),
             static_cast<long long>(config_.fail_timeout / kMillis), fails);
  }
}

}  // namespace sluice
