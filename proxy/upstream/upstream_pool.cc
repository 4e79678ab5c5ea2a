#include "proxy/upstream/upstream_pool.h"

#include <algorithm>

namespace sluice {

UpstreamPool::UpstreamPool(UpstreamClusterPtr cluster, uv_loop_t* loop)
    : cluster_(std::move(cluster)), loop_(loop) {
  idle_.resize(cluster_->size());
  rr_current_.assign(cluster_->size(), 0);
}

UpstreamPool::~UpstreamPool() { closeIdle(); }

int UpstreamPool::pick(uint64_t key_hash, uint64_t tried, Nanos now) {
  size_t n = cluster_->size();
  if (n == 0) return -1;
  // A retry with every server tried (a pool of one, say) may go to a tried one again: a
  // keep-alive connection the server closed as we reused it is the common cause, and a second
  // failure still ends in the real 502/504 rather than a misleading 503.
  bool all_tried = n <= 64 && tried == (n == 64 ? ~0ULL : (1ULL << n) - 1);
  if (all_tried) tried = 0;
  auto untried = [&](size_t i) { return i >= 64 || !(tried & (1ULL << i)); };
  bool any_healthy = false;
  for (size_t i = 0; i < n; i++)
    if (untried(i) && cluster_->server(i).available(now)) {
      any_healthy = true;
      break;
    }
  auto candidate = [&](size_t i) {
    return untried(i) && (!any_healthy || cluster_->server(i).available(now));
  };

  switch (config().balance) {
    case BalanceKind::kHash:
      return cluster_->ringLookup(key_hash, [&](uint32_t i) { return candidate(i); });
    case BalanceKind::kLeastConn: {
      int best = -1;
      double best_load = 0;
      // Start at a rotating offset so ties spread instead of piling on server 0.
      for (size_t k = 0; k < n; k++) {
        size_t i = (rr_start_ + k) % n;
        if (!candidate(i)) continue;
        auto& s = cluster_->server(i);
        double load = (s.active.load(std::memory_order_relaxed) + 1.0) /
                      std::max<uint32_t>(1, s.config.weight);
        if (best < 0 || load < best_load) {
          best = static_cast<int>(i);
          best_load = load;
        }
      }
      rr_start_++;
      return best;
    }
    case BalanceKind::kRoundRobin:
    default: {
      // nginx's smooth weighted round robin: spreads a heavy server's turns evenly.
      int best = -1;
      int64_t total = 0;
      for (size_t i = 0; i < n; i++) {
        if (!candidate(i)) continue;
        int64_t w = std::max<uint32_t>(1, cluster_->server(i).config.weight);
        rr_current_[i] += w;
        total += w;
        if (best < 0 || rr_current_[i] > rr_current_[best]) best = static_cast<int>(i);
      }
      if (best >= 0) rr_current_[best] -= total;
      return best;
    }
  }
}

UpstreamConnection* UpstreamPool::acquire(size_t server, UpstreamHandler* handler) {
  auto& list = idle_[server];
  while (!list.empty()) {
    UpstreamConnection* c = list.back();
    list.pop_back();
    idleChanged(-1);
    if (c->state() != UpstreamConnection::State::kIdle) continue;
    c->attach(handler);
    return c;
  }
  auto* c = new UpstreamConnection(shared_from_this(), server, loop_);
  live_++;
  c->connect(handler);
  return c;
}

void UpstreamPool::release(UpstreamConnection* conn, bool reusable) {
  auto& list = idle_[conn->serverIndex()];
  if (reusable && !retired_ && list.size() < config().keepalive_max_idle) {
    conn->becomeIdle();
    list.push_back(conn);
    idleChanged(1);
  } else {
    conn->close();
  }
}

void UpstreamPool::onConnectionClosed(UpstreamConnection* conn) {
  auto& list = idle_[conn->serverIndex()];
  auto it = std::find(list.begin(), list.end(), conn);
  if (it != list.end()) {
    list.erase(it);
    idleChanged(-1);
  }
  live_--;
}

void UpstreamPool::closeIdle() {
  for (auto& list : idle_) {
    auto copy = list;
    list.clear();
    idleChanged(-static_cast<int64_t>(copy.size()));
    for (auto* c : copy) c->close();
  }
}

void UpstreamPool::retire() {
  retired_ = true;
  closeIdle();
}

size_t UpstreamPool::idleCount() const {
  size_t k = 0;
  for (const auto& l : idle_) k += l.size();
  return k;
}

bool UpstreamPool::tryStartRetry() {
  const auto& c = config();
  int64_t active = cluster_->active_requests.load(std::memory_order_relaxed);
  int64_t allowed = std::max<int64_t>(c.retry_min_concurrent,
                                      static_cast<int64_t>(active * c.retry_budget_percent / 100.0));
  int64_t now = cluster_->retries_in_flight.fetch_add(1, std::memory_order_relaxed);
  if (now >= allowed) {
    cluster_->retries_in_flight.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void UpstreamPool::endRetry() { cluster_->retries_in_flight.fetch_sub(1, std::memory_order_relaxed); }

}  // namespace sluice
