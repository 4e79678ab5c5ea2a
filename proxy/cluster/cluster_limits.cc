#include "proxy/cluster/cluster_limits.h"
#include "proxy/cluster/redis_options.h"

#include <hiredis/hiredis.h>
#include <uv.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/log.h"
#include "core/random.h"
#include "core/metrics.h"
#include "core/redis/client.h"
#include "core/redis/scripts.h"
#include "core/strings.h"
#include "proxy/cluster/lease_account.h"
#include "proxy/config/redis_settings.h"
#include "proxy/limit/limit_set.h"
#include "proxy/server/client_connection.h"
#include "proxy/server/controls.h"
#include "proxy/server/worker.h"

namespace sluice {

using limiter::RateDecision;
using limiter::Verdict;
using redis::RedisCommand;
using redis::RedisResult;

namespace {

std::string hex16(uint64_t v) {
  char b[17];
  snprintf(b, sizeof(b), "%016" PRIx64, v);
  return b;
}

// The rule's budget in Redis terms: lease mode counts fixed windows (a leaky bucket's window is
// its period, its limit the requests per period; burst applies to local scope only).
int64_t budgetLimit(const LimitRuleConfig& rc) {
  return rc.algorithm == LimitAlgorithm::kSlidingWindow ? static_cast<int64_t>(rc.limit)
                                                        : static_cast<int64_t>(rc.requests);
}
Nanos budgetWindow(const LimitRuleConfig& rc) {
  return rc.algorithm == LimitAlgorithm::kSlidingWindow ? rc.window : rc.period;
}

// Counters every worker publishes (its own copy, relaxed stores), summed at scrape time.
struct WorkerStats {
  std::atomic<uint64_t> commands{0}, replies{0}, error_replies{0}, timeouts{0}, connection_lost{0},
      breaker_rejections{0}, breaker_trips{0}, reconnects{0}, connect_failures{0};
  std::atomic<uint64_t> latency_buckets[redis::RedisClientStats::kLatencyBuckets]{};
  std::atomic<uint64_t> latency_count{0}, latency_sum_us{0};
  std::atomic<int> breaker_state{0};  // RedisBreakerState of the worst node
  std::atomic<uint64_t> lease_syncs{0}, lease_takes{0}, lease_granted{0}, lease_exhausted{0},
      lease_credit{0}, lease_failures{0};
  std::atomic<uint64_t> fallback_open{0}, fallback_closed{0};
  std::atomic<uint64_t> exact_calls{0}, exact_failures{0};
  std::atomic<uint64_t> sale_taken{0}, sale_sold_out{0}, sale_failures{0}, sale_no_quota{0};
  std::atomic<uint64_t> lease_keys{0};
};

struct StatsRegistry {
  std::mutex mu;
  std::vector<std::shared_ptr<WorkerStats>> workers;  // never removed: totals survive a restart of a worker
};
StatsRegistry& statsRegistry() {
  static StatsRegistry r;
  return r;
}

void add(std::atomic<uint64_t>& a, uint64_t n = 1) { a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }

// A rule refused wholesale: fail_closed while Redis is away.
class RefuseLimiter final : public limiter::RateLimiter {
 public:
  RateDecision take(uint64_t, Nanos, uint32_t, limiter::ChargeReceipt*) override {
    RateDecision d;
    d.verdict = Verdict::kReject;
    d.retryAfter = kSeconds;
    return d;
  }
  void refund(const limiter::ChargeReceipt&, Nanos) override {}
  RateDecision peek(uint64_t k, Nanos n, uint32_t c) const override {
    return const_cast<RefuseLimiter*>(this)->take(k, n, c, nullptr);
  }
  bool countsRejected() const override { return false; }
};
RefuseLimiter kRefuse;

class ClusterWorker;

// A cluster-scope concurrency rule on one worker: slots this worker holds in Redis
// (concurrency_acquire under its holder id, with a TTL renewed by heartbeats), lent to local
// requests. A request that finds no free held slot gets one acquired in the limit phase's batch
// (ClusterPhase::startExact); a slot given back stays held for reuse and is released to Redis
// after kIdleRelease unused. A crashed instance's holding expires after kTtl.
class ConcurrencyLease final : public limiter::ConcurrencyGate, public limiter::SlotOwner {
 public:
  static constexpr Nanos kTtl = 6 * kSeconds;
  static constexpr Nanos kHeartbeat = 2 * kSeconds;
  static constexpr Nanos kIdleRelease = 1 * kSeconds;
  struct Entry {
    int64_t held = 0;    // units this worker holds in Redis
    int64_t in_use = 0;  // local requests holding one of them
    int64_t pending = 0; // acquires in flight
    Nanos idle_since = 0;
    Nanos beat_at = 0;
  };
  ConcurrencyLease(std::string id, int64_t limit, bool fail_closed) : id_(std::move(id)), limit_(limit), fail_closed_(fail_closed) {}

  limiter::AcquireResult tryAcquire(uint64_t key, Nanos) override {
    limiter::AcquireResult r;
    r.limit = static_cast<uint32_t>(limit_);
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.in_use >= it->second.held) return r;
    it->second.in_use++;
    r.status = limiter::AcquireStatus::kAcquired;
    r.inFlight = static_cast<uint32_t>(it->second.in_use);
    r.slot = limiter::ConcurrencySlot(this, key);
    return r;
  }
  void releaseSlot(uint64_t key) override {
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.in_use == 0) return;
    if (--it->second.in_use < it->second.held) it->second.idle_since = SteadyClock::monotonicNanos();
  }
  // Does a request for `key` need one more slot acquired first?
  bool needs(uint64_t key) {
    Entry& e = entries_[key];
    return e.in_use + e.pending >= e.held;
  }
  Entry& entry(uint64_t key) { return entries_[key]; }
  std::unordered_map<uint64_t, Entry>& entries() { return entries_; }
  const std::string& id() const { return id_; }
  int64_t limit() const { return limit_; }
  bool failClosed() const { return fail_closed_; }
  bool down = false;

 private:
  std::string id_;
  int64_t limit_;
  bool fail_closed_;
  std::unordered_map<uint64_t, Entry> entries_;
};

// The fail_closed fallback of a concurrency rule: no slot.
class RefuseGate final : public limiter::ConcurrencyGate {
 public:
  limiter::AcquireResult tryAcquire(uint64_t, Nanos) override { return {}; }
};
RefuseGate kRefuseGate;

// An exact-mode rule's outcome for one request, replayed to admit(); a refund (a later rule
// refused) is sent to Redis.
class ExactOutcome final : public limiter::RateLimiter {
 public:
  RateDecision decision;
  ClusterWorker* worker = nullptr;
  std::string redis_key;
  bool gcra = false;
  std::vector<std::string> refund_argv;
  RateDecision take(uint64_t key, Nanos, uint32_t cost, limiter::ChargeReceipt* r) override {
    if (r) {
      *r = limiter::ChargeReceipt{};
      r->key = key;
      r->cost = cost;
      r->charged = decision.charged;
    }
    return decision;
  }
  void refund(const limiter::ChargeReceipt& r, Nanos) override;
  RateDecision peek(uint64_t, Nanos, uint32_t) const override { return decision; }
  bool countsRejected() const override { return false; }
};

class ClusterWorker {
 public:
  static ClusterWorker* get(Worker* w, const Config& cfg);

  ClusterWorker(Worker* w, const RedisSettings& s) : worker_(w), loop_(w->loop()) {
    stats_ = std::make_shared<WorkerStats>();
    {
      std::lock_guard<std::mutex> lk(statsRegistry().mu);
      statsRegistry().workers.push_back(stats_);
    }
    connect(s);
    tick_ = new uv_timer_t;
    uv_timer_init(loop_, tick_);
    tick_->data = this;
    check_ = new uv_check_t;
    uv_check_init(loop_, check_);
    check_->data = this;
    uv_check_start(check_, [](uv_check_t* h) { static_cast<ClusterWorker*>(h->data)->flushUrgent(); });
    // The check handle must not keep an idle loop spinning or alive on its own.
    uv_unref(reinterpret_cast<uv_handle_t*>(check_));
    armTick();  // at least once a second: metrics are published there, sale-gate-only configs too
  }
  ~ClusterWorker() {
    retired_.clear();
    client_.reset();  // pending callbacks fire with kClosed now
    uv_close(reinterpret_cast<uv_handle_t*>(tick_), [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    uv_close(reinterpret_cast<uv_handle_t*>(check_), [](uv_handle_t* h) { delete reinterpret_cast<uv_check_t*>(h); });
  }

  redis::RedisClient& client() { return *client_; }
  const RedisSettings& settings() const { return settings_; }
  WorkerStats& stats() { return *stats_; }

  // The lease account of rule `idx` of `set` (created or carried over by rule id and numbers).
  cluster::LeaseAccount* lease(const LimitSet* set, size_t idx, const LimitRuleConfig& rc, const Config& cfg) {
    if (set != cached_set_) {
      cached_set_ = set;
      by_idx_.assign(set->size(), nullptr);
    }
    if (idx < by_idx_.size() && by_idx_[idx]) return by_idx_[idx];
    cluster::LeaseParams p;
    p.limit = budgetLimit(rc);
    p.window = budgetWindow(rc);
    p.sync_interval = rc.sync_interval;
    p.fail_closed = rc.fail_closed;
    uint64_t spread = static_cast<uint64_t>(settings_.expected_instances) * static_cast<uint64_t>(std::max(1, cfg.workers));
    // A quarter of a worker's fair share: enough to make Redis calls rare, small enough that
    // leases left unspent at a window's end (another instance went quiet) waste little.
    p.max_chunk = std::max<int64_t>(1, p.limit / static_cast<int64_t>(4 * spread));
    std::string sig = rc.id + "|" + std::to_string(p.limit) + "|" + std::to_string(p.window) + "|" + rc.key_signature;
    Account* acc = nullptr;
    for (auto& a : accounts_)
      if (a.sig == sig) acc = &a;
    if (!acc) {
      accounts_.push_back(Account{sig, rc.id, std::make_shared<cluster::LeaseAccount>(p), 0});
      acc = &accounts_.back();
      LOG_INFO("cluster: worker %d: rule %s leases up to %" PRId64 " of %" PRId64 " per %" PRId64 " ms",
               worker_->id(), rc.id.c_str(), p.max_chunk, p.limit, p.window / kMillis);
      armTick();
    } else {
      acc->account->setParams(p);
    }
    if (idx < by_idx_.size()) by_idx_[idx] = acc->account.get();
    return acc->account.get();
  }

  // The concurrency lease of rule `idx` (kept for the worker's lifetime: slots point into it).
  ConcurrencyLease* concurrency(const LimitSet* set, size_t idx, const LimitRuleConfig& rc) {
    if (set != conc_set_) {
      conc_set_ = set;
      conc_by_idx_.assign(set->size(), nullptr);
    }
    if (idx < conc_by_idx_.size() && conc_by_idx_[idx]) return conc_by_idx_[idx];
    std::string rid = rc.id + "|" + rc.key_signature + "|" + std::to_string(rc.max_active) + "|" + settings_.key_prefix;
    ConcurrencyLease* found = nullptr;
    for (auto& [sig, lease] : conc_)
      if (sig == rid) found = lease.get();
    if (!found) {
      conc_.emplace_back(rid, std::make_unique<ConcurrencyLease>(rc.id, rc.max_active, rc.fail_closed));
      found = conc_.back().second.get();
      armTick();
    }
    if (idx < conc_by_idx_.size()) conc_by_idx_[idx] = found;
    return found;
  }
  std::string concKey(const ConcurrencyLease* l, uint64_t key) const {
    return settings_.key_prefix + "conc:{" + l->id() + ":" + hex16(key) + "}";
  }
  const std::string& holder() const { return holder_; }
  void concurrencyFailed(ConcurrencyLease* l) {
    if (!l->down) LOG_WARN("cluster: worker %d: concurrency acquire failed: rule %s falls back until Redis answers",
                           worker_->id(), l->id().c_str());
    l->down = true;
    if (!probing_) probe();
  }

  std::string leaseKey(const cluster::LeaseAccount* acc, uint64_t key) const {
    for (const auto& a : accounts_)
      if (a.account.get() == acc) return settings_.key_prefix + "lim:{" + a.id + ":" + hex16(key) + "}";
    return settings_.key_prefix + "lim:{?:" + hex16(key) + "}";
  }

  void publishClientStats() {
    const auto& s = client_->stats();
    auto& o = *stats_;
    o.commands.store(base_.commands + s.commands, std::memory_order_relaxed);
    o.replies.store(base_.replies + s.replies, std::memory_order_relaxed);
    o.error_replies.store(base_.errorReplies + s.errorReplies, std::memory_order_relaxed);
    o.timeouts.store(base_.timeouts + s.timeouts, std::memory_order_relaxed);
    o.connection_lost.store(base_.connectionLost + s.connectionLost, std::memory_order_relaxed);
    o.breaker_rejections.store(base_.breakerRejections + s.breakerRejections, std::memory_order_relaxed);
    o.breaker_trips.store(base_.breakerTrips + s.breakerTrips, std::memory_order_relaxed);
    o.reconnects.store(base_.reconnects + s.reconnects, std::memory_order_relaxed);
    o.connect_failures.store(base_.connectFailures + s.connectFailures, std::memory_order_relaxed);
    for (size_t i = 0; i < redis::RedisClientStats::kLatencyBuckets; i++)
      o.latency_buckets[i].store(base_.latencyBuckets[i] + s.latencyBuckets[i], std::memory_order_relaxed);
    o.latency_count.store(base_.latencyCount + s.latencyCount, std::memory_order_relaxed);
    o.latency_sum_us.store(base_.latencySumMicros + s.latencySumMicros, std::memory_order_relaxed);
    o.breaker_state.store(static_cast<int>(client_->breakerState()), std::memory_order_relaxed);
    uint64_t takes = 0, granted = 0, exhausted = 0, credit = 0, failures = 0, keys = 0;
    for (const auto& a : accounts_) {
      const auto& ls = a.account->stats();
      takes += ls.takes, granted += ls.granted, exhausted += ls.exhausted, credit += ls.credit,
          failures += ls.failures;
      keys += a.account->size();
    }
    o.lease_takes.store(lease_base_[0] + takes, std::memory_order_relaxed);
    o.lease_granted.store(lease_base_[1] + granted, std::memory_order_relaxed);
    o.lease_exhausted.store(lease_base_[2] + exhausted, std::memory_order_relaxed);
    o.lease_credit.store(lease_base_[3] + credit, std::memory_order_relaxed);
    o.lease_failures.store(lease_base_[4] + failures, std::memory_order_relaxed);
    o.lease_keys.store(keys, std::memory_order_relaxed);
  }

  bool anyDown() const {
    for (const auto& a : accounts_)
      if (a.account->down()) return true;
    for (const auto& [sig, l] : conc_)
      if (l->down) return true;
    return false;
  }

 private:
  struct Account {
    std::string sig;
    std::string id;
    std::shared_ptr<cluster::LeaseAccount> account;
    Nanos next_tick;
  };

  void connect(const RedisSettings& s) {
    settings_ = s;
    redis::RedisClientOptions o = redisClientOptions(s);
    if (client_) {
      // Keep the totals monotonic across a client replaced by a reload.
      const auto& st = client_->stats();
      auto addTo = [](uint64_t& a, uint64_t b) { a += b; };
      addTo(base_.commands, st.commands), addTo(base_.replies, st.replies),
          addTo(base_.errorReplies, st.errorReplies), addTo(base_.timeouts, st.timeouts),
          addTo(base_.connectionLost, st.connectionLost), addTo(base_.breakerRejections, st.breakerRejections),
          addTo(base_.breakerTrips, st.breakerTrips), addTo(base_.reconnects, st.reconnects),
          addTo(base_.connectFailures, st.connectFailures), addTo(base_.latencyCount, st.latencyCount),
          addTo(base_.latencySumMicros, st.latencySumMicros);
      for (size_t i = 0; i < redis::RedisClientStats::kLatencyBuckets; i++) base_.latencyBuckets[i] += st.latencyBuckets[i];
    }
    // A replaced client (a reload changed `redis:`) is destroyed at the next tick, not here:
    // its pending callbacks then fire (kClosed) outside whatever request is running now.
    if (client_) retired_.push_back(std::move(client_));
    client_ = redis::RedisClient::create(loop_, o);
  }

 public:
  // A reload changed `redis:`: a new client (endpoints, credentials), leases start over.
  void reconfigure(const RedisSettings& s) {
    if (sameSettings(s, settings_)) return;
    LOG_INFO("cluster: worker %d: redis settings changed, reconnecting", worker_->id());
    connect(s);
    accounts_.clear();
    cached_set_ = nullptr;
    conc_set_ = nullptr;  // concurrency leases stay (slots point into them); their TTL handles the old Redis
    probing_ = false;  // the old client's probe ends with kClosed, which does not clear it
  }
  static bool sameSettings(const RedisSettings& a, const RedisSettings& b) {
    return a.endpoints == b.endpoints && a.cluster == b.cluster && a.username == b.username &&
           a.password == b.password && a.db == b.db && a.command_timeout == b.command_timeout &&
           a.connect_timeout == b.connect_timeout && a.breaker_failures == b.breaker_failures &&
           a.breaker_cooldown == b.breaker_cooldown && a.backoff_base == b.backoff_base &&
           a.backoff_max == b.backoff_max && a.expected_instances == b.expected_instances &&
           a.key_prefix == b.key_prefix;
  }

 private:
  void armTick() {
    Nanos every = 1 * kSeconds;
    for (const auto& a : accounts_) every = std::min(every, a.account->params().sync_interval);
    uint64_t ms = static_cast<uint64_t>(std::max<Nanos>(kMillis, every) / kMillis);
    uv_timer_start(tick_, [](uv_timer_t* t) { static_cast<ClusterWorker*>(t->data)->onTick(); }, ms, ms);
  }

  void onTick() {
    retired_.clear();
    Nanos now = SteadyClock::monotonicNanos();
    std::vector<std::pair<std::shared_ptr<cluster::LeaseAccount>, cluster::LeaseTake>> takes;
    bool down = false;
    for (auto& [sig, l] : conc_) down = down || l->down;
    concurrencyTick(now);
    for (auto& a : accounts_) {
      if (a.account->down()) {
        down = true;
        continue;
      }
      if (now < a.next_tick) continue;
      a.next_tick = now + a.account->params().sync_interval - kMillis / 2;
      std::vector<cluster::LeaseTake> t;
      a.account->collect(now, /*tick=*/true, &t);
      for (auto& x : t) takes.emplace_back(a.account, x);
    }
    send(std::move(takes));
    if (down && !probing_) probe();
    if (now >= next_sweep_) {
      next_sweep_ = now + kSeconds;
      for (auto& a : accounts_) a.account->sweep(now);
    }
    publishClientStats();
  }

  // Runs after every loop turn's I/O: leases that ran dry during it are asked for at once, in one
  // batch, instead of waiting for the tick.
  void flushUrgent() {
    bool any = false;
    for (const auto& a : accounts_) any = any || a.account->hasUrgent();
    if (!any) return;
    Nanos now = SteadyClock::monotonicNanos();
    std::vector<std::pair<std::shared_ptr<cluster::LeaseAccount>, cluster::LeaseTake>> takes;
    for (auto& a : accounts_) {
      std::vector<cluster::LeaseTake> t;
      a.account->collect(now, /*tick=*/false, &t);
      for (auto& x : t) takes.emplace_back(a.account, x);
    }
    send(std::move(takes));
  }

  void send(std::vector<std::pair<std::shared_ptr<cluster::LeaseAccount>, cluster::LeaseTake>> takes) {
    if (takes.empty()) return;
    std::vector<RedisCommand> cmds;
    cmds.reserve(takes.size());
    for (const auto& [acc, t] : takes) {
      const auto& p = acc->params();
      cmds.push_back(RedisCommand::ofScript(redis::scripts::leaseTake(), {leaseKey(acc.get(), t.key)},
                                            {std::to_string(std::max<Nanos>(1, p.window / kMillis)),
                                             std::to_string(p.limit), std::to_string(t.want)}));
    }
    add(stats_->lease_syncs);
    // The shortest sync interval bounds a batch: a late grant is worth less than a retry.
    Nanos timeout = settings_.command_timeout;
    client_->batch(std::move(cmds), [this, takes = std::move(takes)](std::vector<RedisResult>& rs) {
      Nanos now = SteadyClock::monotonicNanos();
      for (size_t i = 0; i < takes.size() && i < rs.size(); i++) {
        auto& [acc, t] = takes[i];
        if (rs[i].status == redis::RedisStatus::kClosed) return;  // shutting down
        int64_t v[4];
        if (rs[i].ok() && redis::scripts::integers(rs[i].reply, v, 4)) {
          acc->applyGrant(t, v[0], v[1], v[3], now, v[2]);
        } else {
          if (!acc->down())
            LOG_WARN("cluster: rule lease sync failed (%s %s): falling back until Redis answers",
                     redis::redisStatusName(rs[i].status), rs[i].reply.debugString().c_str());
          acc->applyFailure(t);
        }
      }
    }, timeout);
  }

  // Concurrency holdings: heartbeats (renew the TTL of what this worker holds) and slots idle
  // for kIdleRelease given back, one batch per tick.
  void concurrencyTick(Nanos now) {
    std::vector<RedisCommand> cmds;
    for (auto& [sig, l] : conc_) {
      if (l->down) continue;
      for (auto it = l->entries().begin(); it != l->entries().end();) {
        auto& e = it->second;
        std::string key = concKey(l.get(), it->first);
        int64_t spare = e.held - e.in_use - e.pending;
        if (spare > 0 && e.idle_since && now - e.idle_since >= ConcurrencyLease::kIdleRelease) {
          cmds.push_back(RedisCommand::ofScript(redis::scripts::concurrencyRelease(), {key},
                                                {holder_, std::to_string(spare),
                                                 std::to_string(ConcurrencyLease::kTtl / kMillis)}));
          e.held -= spare;
          e.beat_at = now;
        } else if (e.held > 0 && now - e.beat_at >= ConcurrencyLease::kHeartbeat) {
          cmds.push_back(RedisCommand::ofScript(redis::scripts::concurrencyAcquire(), {key},
                                                {holder_, std::to_string(l->limit()), "0",
                                                 std::to_string(ConcurrencyLease::kTtl / kMillis)}));
          e.beat_at = now;
        }
        if (e.held == 0 && e.in_use == 0 && e.pending == 0) it = l->entries().erase(it);
        else ++it;
      }
    }
    if (!cmds.empty()) client_->batch(std::move(cmds), [](std::vector<RedisResult>&) {}, settings_.command_timeout);
  }

  // While a rule is on its fallback, one PING per tick tells when Redis is back (the client's
  // breaker fails it fast while open and lets one probe through after its cooldown).
  void probe() {
    probing_ = true;
    client_->command({"PING"}, [this](RedisResult& r) {
      if (r.status == redis::RedisStatus::kClosed) return;
      probing_ = false;
      if (!r.succeeded()) return;
      LOG_INFO("cluster: worker %d: Redis answers again; leases resume", worker_->id());
      for (auto& a : accounts_) a.account->setDown(false);
      for (auto& [sig, l] : conc_) {
        // What this worker held may have expired meanwhile: start over (TTL frees the rest).
        l->down = false;
        for (auto& [k, e] : l->entries()) e.held = e.in_use, e.pending = 0;
      }
    });
  }

  Worker* worker_;
  uv_loop_t* loop_;
  RedisSettings settings_;
  redis::RedisClientPtr client_;
  std::vector<redis::RedisClientPtr> retired_;
  redis::RedisClientStats base_;
  uint64_t lease_base_[5] = {0, 0, 0, 0, 0};
  std::shared_ptr<WorkerStats> stats_;
  uv_timer_t* tick_ = nullptr;
  uv_check_t* check_ = nullptr;
  std::vector<Account> accounts_;  // deque-like use: pointers into it are not kept across calls
  const LimitSet* cached_set_ = nullptr;
  std::vector<cluster::LeaseAccount*> by_idx_;
  std::vector<std::pair<std::string, std::unique_ptr<ConcurrencyLease>>> conc_;  // never shrinks
  const LimitSet* conc_set_ = nullptr;
  std::vector<ConcurrencyLease*> conc_by_idx_;
  std::string holder_ = [] {
    char b[17];
    randomHex(b, 16);
    b[16] = 0;
    return std::string(b);
  }();
  bool probing_ = false;
  Nanos next_sweep_ = 0;
};

thread_local std::unique_ptr<ClusterWorker> tl_worker;

ClusterWorker* ClusterWorker::get(Worker* w, const Config& cfg) {
  if (!cfg.redis) return nullptr;
  thread_local std::shared_ptr<const RedisSettings> seen;
  if (tl_worker) {
    if (seen != cfg.redis) {  // a reload: same settings keep the connection and the leases
      seen = cfg.redis;
      tl_worker->reconfigure(*cfg.redis);
    }
    return tl_worker.get();
  }
  seen = cfg.redis;
  tl_worker = std::make_unique<ClusterWorker>(w, *cfg.redis);
  // Closed with the worker's other handles when it drains (its loop must run once more).
  auto previous = std::move(w->on_shutdown);
  w->on_shutdown = [previous = std::move(previous)] {
    tl_worker.reset();
    if (previous) previous();
  };
  return tl_worker.get();
}

void ExactOutcome::refund(const limiter::ChargeReceipt& r, Nanos) {
  if (!r.charged || !worker || refund_argv.empty()) return;
  // A later rule refused: give the unit back in Redis (fire and forget).
  worker->client().eval(gcra ? redis::scripts::gcra() : redis::scripts::slidingWindow(), {redis_key},
                        refund_argv, [](RedisResult&) {});
}

}  // namespace

// Per request: the exact-mode outcomes and the sale gate's state.
struct ClusterExchangeState {
  ClientConnection* conn = nullptr;
  bool exact_sent = false;
  struct Exact {
    int idx = -1;
    bool ok = false;  // Redis answered
    ExactOutcome outcome;
  };
  std::vector<Exact> exact;
  bool sale_done = false;
};

namespace {

ClusterExchangeState* ensureState(ClientConnection& c, Exchange& e) {
  if (!e.cluster) {
    e.cluster = std::make_shared<ClusterExchangeState>();
    e.cluster->conn = &c;
  }
  return e.cluster.get();
}

void note(Exchange& e, const std::string& json_member) {
  if (!e.decisions.empty()) e.decisions.push_back(',');
  e.decisions.append(json_member);
}

}  // namespace

PhaseResult ClusterPhase::startExact(ClientConnection& c, const RouteConfig& route, const LimitRequestView& view) {
  Exchange& e = *c.ex_;
  const Config& cfg = *e.gen->gen->config;
  if (!cfg.redis) return PhaseResult::kContinue;
  if (e.cluster && e.cluster->exact_sent) return PhaseResult::kContinue;
  auto& limits = *e.gen->gen->limits;
  std::vector<RedisCommand> cmds;
  std::vector<ClusterExchangeState::Exact> exact;
  // What each command of the batch is: >= 0 an exact rule (index into `exact`), < 0 a
  // concurrency acquire (-1 - index into `conc`).
  std::vector<int> kinds;
  std::vector<std::pair<ConcurrencyLease*, uint64_t>> conc;
  Nanos budget = 0;
  ClusterWorker* w = nullptr;
  for (int idx : route.limits) {
    const auto& rt = limits.rule(static_cast<size_t>(idx));
    const auto& rc = *rt.config;
    bool is_conc = rc.cluster_scope && rc.algorithm == LimitAlgorithm::kConcurrency;
    if (!rc.cluster_scope || (!rc.cluster_exact && !is_conc)) continue;
    if (static_cast<RuleModeOverride>(rt.mode_override->load(std::memory_order_relaxed)) == RuleModeOverride::kOff)
      continue;
    uint64_t key;
    if (!LimitSet::keyFor(rc, view, &key)) continue;
    if (!w) w = ClusterWorker::get(c.worker_, cfg);
    if (is_conc) {
      // A slot this worker already holds in Redis is lent at once; otherwise acquire one.
      ConcurrencyLease* lease = w->concurrency(&limits, static_cast<size_t>(idx), rc);
      if (lease->down || !lease->needs(key)) continue;
      lease->entry(key).pending++;
      kinds.push_back(-1 - static_cast<int>(conc.size()));
      conc.emplace_back(lease, key);
      cmds.push_back(RedisCommand::ofScript(redis::scripts::concurrencyAcquire(), {w->concKey(lease, key)},
                                            {w->holder(), std::to_string(rc.max_active), "1",
                                             std::to_string(ConcurrencyLease::kTtl / kMillis)}));
      budget = budget == 0 ? rc.redis_timeout : std::min(budget, rc.redis_timeout);
      continue;
    }
    ClusterExchangeState::Exact x;
    x.idx = idx;
    x.outcome.worker = w;
    x.outcome.gcra = rc.algorithm == LimitAlgorithm::kLeakyBucket;
    const std::string prefix = w->settings().key_prefix + (x.outcome.gcra ? "gcra:{" : "sw:{");
    x.outcome.redis_key = prefix + rc.id + ":" + hex16(key) + "}";
    std::vector<std::string> argv;
    if (x.outcome.gcra) {
      int64_t interval_us = std::max<int64_t>(1, rc.period / static_cast<int64_t>(rc.requests) / 1000);
      argv = {std::to_string(interval_us), std::to_string(rc.burst), "1"};
    } else {
      argv = {std::to_string(std::max<Nanos>(1, rc.window / kMillis)), std::to_string(rc.limit), "1"};
    }
    x.outcome.refund_argv = {argv[0], argv[1], "-1"};
    cmds.push_back(RedisCommand::ofScript(x.outcome.gcra ? redis::scripts::gcra() : redis::scripts::slidingWindow(),
                                          {x.outcome.redis_key}, std::move(argv)));
    kinds.push_back(static_cast<int>(exact.size()));
    exact.push_back(std::move(x));
    budget = budget == 0 ? rc.redis_timeout : std::min(budget, rc.redis_timeout);
  }
  ClusterExchangeState* st = ensureState(c, e);
  st->exact_sent = true;
  if (cmds.empty()) return PhaseResult::kContinue;
  st->exact = std::move(exact);
  add(w->stats().exact_calls);
  std::weak_ptr<ClusterExchangeState> weak = e.cluster;
  w->client().batch(std::move(cmds), [weak, w, kinds = std::move(kinds), conc = std::move(conc)](std::vector<RedisResult>& rs) {
    WorkerStats* ws = &w->stats();
    // Concurrency acquires first, whether or not the request is still there: a slot granted
    // in Redis is held by this worker either way (lent to the next request, or given back
    // when idle).
    for (size_t i = 0; i < kinds.size() && i < rs.size(); i++) {
      if (kinds[i] >= 0) continue;
      auto [lease, key] = conc[static_cast<size_t>(-1 - kinds[i])];
      auto& en = lease->entry(key);
      en.pending--;
      int64_t v[3];
      if (rs[i].ok() && redis::scripts::integers(rs[i].reply, v, 3)) {
        if (v[0] == 1) {
          en.held++;
          en.beat_at = SteadyClock::monotonicNanos();
          en.idle_since = en.beat_at;
        }
      } else if (rs[i].status != redis::RedisStatus::kClosed) {
        add(ws->exact_failures);
        w->concurrencyFailed(lease);
      }
    }
    auto st = weak.lock();
    if (!st) return;
    for (size_t i = 0; i < kinds.size() && i < rs.size(); i++) {
      if (kinds[i] < 0) continue;
      auto& x = st->exact[static_cast<size_t>(kinds[i])];
      int64_t v[4];
      if (!rs[i].ok() || !redis::scripts::integers(rs[i].reply, v, 4)) {
        x.ok = false;
        add(ws->exact_failures);
        continue;
      }
      x.ok = true;
      auto& d = x.outcome.decision;
      bool allowed = v[0] == 1;
      d.verdict = allowed ? Verdict::kAllow : Verdict::kReject;
      d.charged = allowed;
      d.remaining = v[1];
      if (x.outcome.gcra) {
        d.retryAfter = v[2] * 1000;
        d.reset = v[3] * 1000;
      } else {
        d.retryAfter = v[2] * kMillis;
        d.reset = std::max<int64_t>(0, v[3] - static_cast<int64_t>(wallMicros() / 1000)) * kMillis;
      }
    }
    ClientConnection* c = st->conn;
    if (!c->ex_ || c->ex_->cluster != st || c->ex_->response_started || c->closing_) return;
    c->resumeAfterLimit();
  }, budget);
  return PhaseResult::kSuspended;
}

limiter::ConcurrencyGate* ClusterPhase::gateFor(ClientConnection& c, int idx, const LimitRuleRuntime& rt, uint64_t) {
  Exchange& e = *c.ex_;
  const auto& rc = *rt.config;
  ClusterWorker* w = ClusterWorker::get(c.worker_, *e.gen->gen->config);
  if (!w) return rt.concurrency.get();
  ConcurrencyLease* lease = w->concurrency(e.gen->gen->limits.get(), static_cast<size_t>(idx), rc);
  if (!lease->down) return lease;
  if (rc.fail_closed) {
    add(w->stats().fallback_closed);
    return &kRefuseGate;
  }
  add(w->stats().fallback_open);
  return rt.concurrency.get();  // the local share (max_active / expected_instances)
}

limiter::RateLimiter* ClusterPhase::limiterFor(ClientConnection& c, int idx, const LimitRuleRuntime& rt, uint64_t) {
  Exchange& e = *c.ex_;
  const auto& rc = *rt.config;
  const Config& cfg = *e.gen->gen->config;
  ClusterWorker* w = ClusterWorker::get(c.worker_, cfg);
  if (!w) return rt.rate.get();
  auto fallback = [&]() -> limiter::RateLimiter* {
    if (rc.fail_closed) {
      add(w->stats().fallback_closed);
      return &kRefuse;
    }
    add(w->stats().fallback_open);
    return rt.rate.get();  // the local share (LimitSet builds cluster rules' limiters that way)
  };
  if (rc.cluster_exact) {
    if (e.cluster)
      for (auto& x : e.cluster->exact)
        if (x.idx == idx) return x.ok ? static_cast<limiter::RateLimiter*>(&x.outcome) : fallback();
    return fallback();
  }
  cluster::LeaseAccount* acc = w->lease(e.gen->gen->limits.get(), static_cast<size_t>(idx), rc, cfg);
  if (acc->down()) return fallback();
  return acc;
}

PhaseResult ClusterPhase::saleGate(ClientConnection& c, const RouteConfig& route) {
  if (!route.sale_gate) return PhaseResult::kContinue;
  Exchange& e = *c.ex_;
  if (e.cluster && e.cluster->sale_done) return PhaseResult::kContinue;
  const SaleGateConfig& g = *route.sale_gate;
  const Config& cfg = *e.gen->gen->config;
  const auto& h = c.parser_.head();
  LimitRequestView view{&e.client_ip, route.name, h.target, &h.headers};
  std::string_view item;
  if (!LimitSet::sourceValueUncached(g.item, view, &item)) return PhaseResult::kContinue;  // not an item checkout
  ClusterWorker* w = ClusterWorker::get(c.worker_, cfg);
  if (!w) return PhaseResult::kContinue;
  ClusterExchangeState* st = ensureState(c, e);
  st->sale_done = true;
  std::string key = w->settings().key_prefix + g.keyFor(item);
  std::string item_id(item.substr(0, 128));
  std::weak_ptr<ClusterExchangeState> weak = e.cluster;
  WorkerStats* ws = &w->stats();
  auto gate = route.sale_gate;  // keeps the config alive for the callback
  w->client().eval(redis::scripts::saleTake(), {key}, {"1"}, [weak, ws, gate, item_id](RedisResult& r) {
    // kClosed (a client replaced by a reload) is a failure like any other; at shutdown no
    // connection is left to resume.
    auto st = weak.lock();
    if (!st) return;
    ClientConnection* c = st->conn;
    if (!c->ex_ || c->ex_->cluster != st || c->ex_->response_started || c->closing_) return;
    Exchange& e = *c->ex_;
    int64_t v[2];
    std::string esc = jsonEscape(item_id);
    if (!r.ok() || !redis::scripts::integers(r.reply, v, 2)) {
      add(ws->sale_failures);
      if (gate->fail_closed) {
        note(e, "\"sale\":{\"item\":\"" + esc + "\",\"result\":\"redis_down\"}");
        LocalResponse lr;
        lr.status = gate->down_status;
        lr.content_type = "application/json";
        lr.body = "{\"error\":\"sale gate unavailable\",\"request_id\":\"" + e.request_id + "\"}\n";
        lr.headers.emplace_back("Retry-After", "1");
        c->respondLocal(lr, false);
        if (!c->closing_) c->flush();
        return;
      }
      note(e, "\"sale\":{\"item\":\"" + esc + "\",\"result\":\"fail_open\"}");
      c->resumeAfterSaleGate();
      return;
    }
    if (v[0] > 0) {
      add(ws->sale_taken);
      note(e, "\"sale\":{\"item\":\"" + esc + "\",\"result\":\"taken\",\"remaining\":" + std::to_string(v[1]) + "}");
      c->resumeAfterSaleGate();
      return;
    }
    if (v[1] < 0) {  // no quota for this item: not on sale, nothing to gate
      add(ws->sale_no_quota);
      c->resumeAfterSaleGate();
      return;
    }
    add(ws->sale_sold_out);
    note(e, "\"sale\":{\"item\":\"" + esc + "\",\"result\":\"sold_out\"}");
    LocalResponse lr;
    lr.status = gate->status;
    lr.content_type = gate->content_type;
    lr.body = gate->body;
    c->respondLocal(lr, false);
    if (!c->closing_) c->flush();
  }, g.redis_timeout);
  return PhaseResult::kSuspended;
}

bool ClusterPhase::spendOnce(ClientConnection& c, const std::string& id, int64_t ttl_ms,
                             std::function<void(ClientConnection&, SpendResult)> done) {
  Exchange& e = *c.ex_;
  const Config& cfg = *e.gen->gen->config;
  if (!cfg.redis || !cfg.redis->share_risk) return false;
  ClusterWorker* w = ClusterWorker::get(c.worker_, cfg);
  if (!w) return false;
  ensureState(c, e);
  std::weak_ptr<ClusterExchangeState> weak = e.cluster;
  // The hash tag keeps each ticket's key whole on one Redis Cluster slot.
  std::string key = w->settings().key_prefix + "spent:{" + id + "}";
  w->client().eval(redis::scripts::spendOnce(), {key}, {std::to_string(ttl_ms), "sluice"},
                   [weak, done = std::move(done)](RedisResult& r) {
    auto st = weak.lock();
    if (!st) return;
    ClientConnection* conn = st->conn;
    if (!conn->ex_ || conn->ex_->cluster != st || conn->ex_->response_started || conn->closing_) return;
    int64_t v[2];
    SpendResult res = SpendResult::kUnavailable;
    if (r.ok() && redis::scripts::integers(r.reply, v, 2)) res = v[0] == 1 ? SpendResult::kFirst : SpendResult::kAlreadySpent;
    done(*conn, res);
    if (!conn->closing_) conn->flush();
  }, cfg.redis->spend_timeout);
  return true;
}

// ---- metrics and status

void ClusterPhase::registerMetrics(MetricsRegistry& registry) {
  auto sum = [](std::atomic<uint64_t> WorkerStats::*field) {
    std::lock_guard<std::mutex> lk(statsRegistry().mu);
    uint64_t t = 0;
    for (const auto& w : statsRegistry().workers) t += (w.get()->*field).load(std::memory_order_relaxed);
    return static_cast<double>(t);
  };
  registry.callback("sluice_redis_commands_total", "Redis commands sent by the data workers (cluster scope).",
                    MetricType::kCounter, {}, [sum](MetricSampleSink& s) { s.add(sum(&WorkerStats::commands)); });
  registry.callback(
      "sluice_redis_errors_total",
      "Redis calls that failed, by kind: timeout, connection_lost, breaker_open (failed fast), "
      "error_reply, connect_failure.",
      MetricType::kCounter, {"kind"}, [sum](MetricSampleSink& s) {
        s.add({"timeout"}, sum(&WorkerStats::timeouts));
        s.add({"connection_lost"}, sum(&WorkerStats::connection_lost));
        s.add({"breaker_open"}, sum(&WorkerStats::breaker_rejections));
        s.add({"error_reply"}, sum(&WorkerStats::error_replies));
        s.add({"connect_failure"}, sum(&WorkerStats::connect_failures));
      });
  registry.callback("sluice_redis_breaker_trips_total", "Redis node breakers opened (all workers).",
                    MetricType::kCounter, {}, [sum](MetricSampleSink& s) { s.add(sum(&WorkerStats::breaker_trips)); });
  registry.callback("sluice_redis_breaker_open",
                    "Data workers whose Redis breaker is open (1 node or more) or half open.",
                    MetricType::kGauge, {"state"}, [](MetricSampleSink& s) {
                      std::lock_guard<std::mutex> lk(statsRegistry().mu);
                      double open = 0, half = 0;
                      for (const auto& w : statsRegistry().workers) {
                        int b = w->breaker_state.load(std::memory_order_relaxed);
                        open += b == static_cast<int>(redis::RedisBreakerState::kOpen);
                        half += b == static_cast<int>(redis::RedisBreakerState::kHalfOpen);
                      }
                      s.add({"open"}, open);
                      s.add({"half_open"}, half);
                    });
  registry.callback(
      "sluice_redis_latency_under_total",
      "Redis calls (submit to reply) that took under each power-of-two bound in seconds "
      "(cumulative, like histogram buckets; the client's log2 microsecond buckets).",
      MetricType::kCounter, {"seconds"}, [](MetricSampleSink& s) {
        std::lock_guard<std::mutex> lk(statsRegistry().mu);
        uint64_t cum = 0;
        for (size_t i = 0; i < redis::RedisClientStats::kLatencyBuckets; i++) {
          for (const auto& w : statsRegistry().workers) cum += w->latency_buckets[i].load(std::memory_order_relaxed);
          if (i < 4 || i > 20) continue;  // 16 us .. 1 s is the interesting range
          char le[32];
          snprintf(le, sizeof(le), "%g", static_cast<double>(1ull << i) / 1e6);
          s.add({le}, static_cast<double>(cum));
        }
        s.add({"+Inf"}, static_cast<double>(cum));
      });
  registry.callback("sluice_redis_latency_seconds_total", "Sum of Redis call latencies in seconds.",
                    MetricType::kCounter, {}, [sum](MetricSampleSink& s) { s.add(sum(&WorkerStats::latency_sum_us) / 1e6); });
  registry.callback("sluice_redis_replies_total", "Redis calls that got a reply.",
                    MetricType::kCounter, {}, [sum](MetricSampleSink& s) { s.add(sum(&WorkerStats::latency_count)); });
  registry.callback(
      "sluice_cluster_lease_total",
      "Lease-mode limits: syncs (batches sent), takes (lease_take calls), granted (units), "
      "exhausted (grants that found the window's budget gone), credit (requests allowed while a "
      "dry lease was refilled), failures (takes that failed: the rule fell back).",
      MetricType::kCounter, {"event"}, [sum](MetricSampleSink& s) {
        s.add({"syncs"}, sum(&WorkerStats::lease_syncs));
        s.add({"takes"}, sum(&WorkerStats::lease_takes));
        s.add({"granted"}, sum(&WorkerStats::lease_granted));
        s.add({"exhausted"}, sum(&WorkerStats::lease_exhausted));
        s.add({"credit"}, sum(&WorkerStats::lease_credit));
        s.add({"failures"}, sum(&WorkerStats::lease_failures));
      });
  registry.callback("sluice_cluster_fallbacks_total",
                    "Cluster-rule decisions taken without Redis, by policy: fail_open (local share) "
                    "or fail_closed (refused).",
                    MetricType::kCounter, {"policy"}, [sum](MetricSampleSink& s) {
                      s.add({"fail_open"}, sum(&WorkerStats::fallback_open));
                      s.add({"fail_closed"}, sum(&WorkerStats::fallback_closed));
                    });
  registry.callback("sluice_cluster_exact_total", "Exact-mode round trips (calls) and failed ones.",
                    MetricType::kCounter, {"result"}, [sum](MetricSampleSink& s) {
                      s.add({"calls"}, sum(&WorkerStats::exact_calls));
                      s.add({"failures"}, sum(&WorkerStats::exact_failures));
                    });
  registry.callback("sluice_sale_gate_total",
                    "Sale gate outcomes: taken, sold_out, no_quota (item not on sale), redis_error.",
                    MetricType::kCounter, {"result"}, [sum](MetricSampleSink& s) {
                      s.add({"taken"}, sum(&WorkerStats::sale_taken));
                      s.add({"sold_out"}, sum(&WorkerStats::sale_sold_out));
                      s.add({"no_quota"}, sum(&WorkerStats::sale_no_quota));
                      s.add({"redis_error"}, sum(&WorkerStats::sale_failures));
                    });
}

std::string ClusterPhase::statusJson() {
  std::lock_guard<std::mutex> lk(statsRegistry().mu);
  std::string out = "{\"workers\":[";
  bool first = true;
  for (const auto& w : statsRegistry().workers) {
    auto g = [](const std::atomic<uint64_t>& a) { return std::to_string(a.load(std::memory_order_relaxed)); };
    if (!first) out += ",";
    first = false;
    out += "{\"redis_commands\":" + g(w->commands) + ",\"redis_replies\":" + g(w->replies) +
           ",\"redis_timeouts\":" + g(w->timeouts) + ",\"breaker_state\":\"" +
           redis::redisBreakerStateName(static_cast<redis::RedisBreakerState>(w->breaker_state.load())) +
           "\",\"lease_syncs\":" + g(w->lease_syncs) + ",\"lease_takes\":" + g(w->lease_takes) +
           ",\"lease_granted\":" + g(w->lease_granted) + ",\"lease_exhausted\":" + g(w->lease_exhausted) +
           ",\"lease_credit\":" + g(w->lease_credit) + ",\"lease_failures\":" + g(w->lease_failures) +
           ",\"lease_keys\":" + g(w->lease_keys) + ",\"fallback_open\":" + g(w->fallback_open) +
           ",\"fallback_closed\":" + g(w->fallback_closed) + ",\"exact_calls\":" + g(w->exact_calls) +
           ",\"sale_taken\":" + g(w->sale_taken) + ",\"sale_sold_out\":" + g(w->sale_sold_out) + "}";
  }
  return out + "]}";
}

}  // namespace sluice
