#include "proxy/server/proxy_metrics.h"

#include <map>

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

#include "core/clock.h"
#include "proxy/limit/limit_set.h"
#include "proxy/server/lua_phase.h"
#include "proxy/server/risk_phase.h"
#include "proxy/cluster/cluster_limits.h"
#include "proxy/server/server.h"
#include "proxy/upstream/upstream_cluster.h"

namespace sluice {

const char* const kStatusClasses[5] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
const char* const kNoRouteLabel = "(none)";
const char* const kLimitActions[6] = {"allowed",  "rejected",        "delayed",
                                      "degraded", "shadow_rejected", "skipped"};

ProxyMetrics::ProxyMetrics(size_t data_workers, Server* server)
    : registry_(data_workers + 1),
      requests_(registry_.counter(
          "sluice_http_requests_total",
          "Client requests answered, by route and status class (admin API requests excluded).",
          {"route", "code_class"})),
      request_duration_(registry_.latencyHistogram(
          "sluice_http_request_duration_seconds",
          "Time from the first byte of a request to the end of its response, by route.",
          {"route"})),
      request_bytes_(registry_.counter("sluice_http_request_body_bytes_total",
                                       "Request body bytes received from clients, by route.",
                                       {"route"})),
      response_bytes_(registry_.counter("sluice_http_response_body_bytes_total",
                                        "Response body bytes sent to clients, by route.",
                                        {"route"})),
      upstream_duration_(registry_.latencyHistogram(
          "sluice_upstream_response_duration_seconds",
          "Time from choosing an upstream server (connect or reuse) to the last byte of its "
          "response, for responses that completed, by upstream.",
          {"upstream"})),
      retries_(registry_.counter("sluice_upstream_retries_total",
                                 "Requests retried on another upstream server, by upstream.",
                                 {"upstream"})),
      pool_idle_(registry_.gauge("sluice_upstream_pool_idle_connections",
                                 "Idle keep-alive connections to an upstream, summed over workers.",
                                 {"upstream"})),
      limit_decisions_(registry_.counter(
          "sluice_limit_decisions_total",
          "Limit decisions by rule and action: allowed, rejected, delayed, degraded, "
          "shadow_rejected (a shadow rule would have refused), skipped (no key value).",
          {"rule", "action"})),
      pool_refused_(registry_.counter(
          "sluice_upstream_refused_total",
          "Requests answered 503 before reaching an upstream pool, by upstream and reason: "
          "max_active, adaptive_concurrency, saturated (shed by route priority).",
          {"upstream", "reason"})),
      accepted_(registry_
                    .counter("sluice_client_connections_accepted_total",
                             "Client connections accepted on the proxy listeners.")
                    .with({})),
      open_(registry_
                .gauge("sluice_client_connections_open",
                       "Client connections open on the proxy listeners.")
                .with({})),
      accept_paused_(registry_.counter(
          "sluice_accept_paused_total",
          "Times a worker stopped accepting client connections (they wait in the listen "
          "backlog), by reason: max_connections (client.max_connections open), fd_limit "
          "(accept failed with EMFILE/ENFILE: out of file descriptors).",
          {"reason"})),
      paused_max_connections_(accept_paused_.with({"max_connections"})),
      paused_fd_limit_(accept_paused_.with({"fd_limit"})) {
  if (server) {
    addServerFamilies(server);
    RiskPhase::registerMetrics(registry_);  // sluice_risk_*: process-wide, like the risk tables
    ClusterPhase::registerMetrics(registry_);  // sluice_redis_*, sluice_cluster_*, sluice_sale_*
  }
}

std::vector<WorkerMetrics> ProxyMetrics::bind(const Config& cfg) {
  size_t shards = registry_.shardCount();
  std::vector<WorkerMetrics> out(shards);
  auto bindRoute = [&](const std::string& name, size_t index) {
    Counter req[5];
    for (int k = 0; k < 5; k++) req[k] = requests_.with({name, kStatusClasses[k]});
    Histogram dur = request_duration_.with({name});
    Counter in = request_bytes_.with({name});
    Counter outb = response_bytes_.with({name});
    for (size_t s = 0; s < shards; s++) {
      RouteMetrics& m = index == SIZE_MAX ? out[s].unmatched : out[s].routes[index];
      for (int k = 0; k < 5; k++) m.requests[k] = req[k].shard(s);
      m.duration = dur.shard(s);
      m.request_body_bytes = in.shard(s);
      m.response_body_bytes = outb.shard(s);
    }
  };
  for (auto& w : out) {
    w.routes.resize(cfg.routes.size());
    w.upstreams.resize(cfg.upstreams.size());
    w.limits.resize(cfg.limit_rules.size());
  }
  bindRoute(kNoRouteLabel, SIZE_MAX);
  for (size_t i = 0; i < cfg.routes.size(); i++) bindRoute(cfg.routes[i].name, i);
  for (size_t i = 0; i < cfg.upstreams.size(); i++) {
    const std::string& name = cfg.upstreams[i].name;
    Histogram dur = upstream_duration_.with({name});
    Counter retries = retries_.with({name});
    Gauge idle = pool_idle_.with({name});
    Counter refused[3];
    const char* reasons[3] = {"max_active", "adaptive_concurrency", "saturated"};
    for (int k = 0; k < 3; k++) refused[k] = pool_refused_.with({name, reasons[k]});
    for (size_t s = 0; s < shards; s++) {
      for (int k = 0; k < 3; k++) out[s].upstreams[i].refused[k] = refused[k].shard(s);
      out[s].upstreams[i].response_duration = dur.shard(s);
      out[s].upstreams[i].retries = retries.shard(s);
      out[s].upstreams[i].idle_connections = idle.shard(s);
    }
  }
  for (size_t i = 0; i < cfg.limit_rules.size(); i++) {
    Counter c[6];
    for (int a = 0; a < 6; a++) c[a] = limit_decisions_.with({cfg.limit_rules[i].id, kLimitActions[a]});
    for (size_t s = 0; s < shards; s++) {
      auto& m = out[s].limits[i];
      CounterShard* cells[6] = {&m.allowed,  &m.rejected,        &m.delayed,
                                &m.degraded, &m.shadow_rejected, &m.skipped};
      for (int a = 0; a < 6; a++) *cells[a] = c[a].shard(s);
    }
  }
  return out;
}

uint64_t ProxyMetrics::limitDecisions(const std::string& rule, const char* action) {
  return limit_decisions_.with({rule, action}).value();
}

namespace {

double processCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double residentBytes() {
  FILE* f = fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  int n = fscanf(f, "%lu %lu", &size, &resident);
  fclose(f);
  return n == 2 ? static_cast<double>(resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) : 0;
}

double openFds() {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return 0;
  int n = 0;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1;  // not the directory handle itself
}

}  // namespace

void ProxyMetrics::addServerFamilies(Server* server) {
  // Read on the control thread, which serves the admin API and runs reloads.
  registry_.callback("sluice_build_info", "Always 1; the version in a label.", MetricType::kGauge,
                     {"version"}, [](MetricSampleSink& s) { s.add({SLUICE_VERSION}, 1); });
  registry_.callback("sluice_config_generation",
                     "Id of the configuration generation serving new requests.",
                     MetricType::kGauge, {}, [server](MetricSampleSink& s) {
                       s.add(static_cast<double>(server->generation()->id));
                     });
  registry_.callback("sluice_reloads_total",
                     "Configuration reloads (SIGHUP, POST /reload) by result; an unchanged file "
                     "counts as ok.",
                     MetricType::kCounter, {"result"}, [server](MetricSampleSink& s) {
                       s.add({"ok"}, static_cast<double>(server->reloadsOk()));
                       s.add({"failed"}, static_cast<double>(server->reloadsFailed()));
                     });
  // Lua (lua_phase.h): each worker publishes a snapshot of its VMs once a second.
  registry_.callback("sluice_lua_vm_memory_bytes",
                     "Bytes allocated by the Lua VMs of all workers (state: current generation, "
                     "or retired ones still finishing requests).",
                     MetricType::kGauge, {"state"}, [server](MetricSampleSink& s) {
                       double cur = 0, old = 0;
                       for (const auto& w : server->luaStats())
                         cur += static_cast<double>(w.memory_bytes),
                             old += static_cast<double>(w.retired_memory_bytes);
                       s.add({"current"}, cur);
                       s.add({"retired"}, old);
                     });
  registry_.callback("sluice_lua_policy_errors",
                     "Requests a policy failed (error, budget, memory) in the current generation, "
                     "all workers; starts at 0 with each new generation.",
                     MetricType::kGauge, {"policy"}, [server](MetricSampleSink& s) {
                       std::map<std::string, double> m;
                       for (const auto& w : server->luaStats())
                         for (const auto& p : w.policies) m[p.name] += static_cast<double>(p.errors);
                       for (const auto& [name, v] : m) s.add({name}, v);
                     });
  registry_.callback("sluice_lua_policy_overruns",
                     "Time-budget overruns of a policy in the current generation, all workers "
                     "(a policy is disabled on a worker after lua.overruns_to_disable).",
                     MetricType::kGauge, {"policy"}, [server](MetricSampleSink& s) {
                       std::map<std::string, double> m;
                       for (const auto& w : server->luaStats())
                         for (const auto& p : w.policies) m[p.name] += static_cast<double>(p.overruns);
                       for (const auto& [name, v] : m) s.add({name}, v);
                     });
  registry_.callback("process_start_time_seconds", "Start time of the process, Unix seconds.",
                     MetricType::kGauge, {}, [server](MetricSampleSink& s) {
                       s.add(static_cast<double>(server->startedAtUs()) / 1e6);
                     });
  registry_.callback("process_cpu_seconds_total", "User and system CPU time of the process.",
                     MetricType::kCounter, {},
                     [](MetricSampleSink& s) { s.add(processCpuSeconds()); });
  registry_.callback("process_resident_memory_bytes", "Resident memory of the process.",
                     MetricType::kGauge, {}, [](MetricSampleSink& s) { s.add(residentBytes()); });
  registry_.callback("process_open_fds", "Open file descriptors of the process.",
                     MetricType::kGauge, {}, [](MetricSampleSink& s) { s.add(openFds()); });

  registry_.callback("sluice_limit_live_keys",
                     "Keys holding limiter state (non-idle buckets and windows, keys with requests "
                     "in flight), by rule; computed by scanning the rule's table at scrape time.",
                     MetricType::kGauge, {"rule"}, [server](MetricSampleSink& s) {
                       auto gen = server->generation();
                       Nanos now = SteadyClock::monotonicNanos();
                       for (size_t i = 0; i < gen->limits->size(); i++) {
                         const auto& rt = gen->limits->rule(i);
                         s.add({rt.config->id}, static_cast<double>(rt.liveKeys(now)));
                       }
                     });

  registry_.callback("sluice_limit_table_evictions_total",
                     "Keys a rule's table dropped to make room, by rule and kind: idle (lossless) "
                     "or active (live state forgotten: raise the rule's memory).",
                     MetricType::kCounter, {"rule", "kind"}, [server](MetricSampleSink& s) {
                       auto gen = server->generation();
                       for (size_t i = 0; i < gen->limits->size(); i++) {
                         const auto& rt = gen->limits->rule(i);
                         const limiter::KeyTableStats ts = rt.tableStats();
                         s.add({rt.config->id, "idle"}, static_cast<double>(ts.evictedIdle));
                         s.add({rt.config->id, "active"}, static_cast<double>(ts.evictedActive));
                       }
                     });
  registry_.callback("sluice_limit_table_inserts_refused_total",
                     "New keys a rule's table turned away because their set held only keys with "
                     "requests in flight, by rule.",
                     MetricType::kCounter, {"rule"}, [server](MetricSampleSink& s) {
                       auto gen = server->generation();
                       for (size_t i = 0; i < gen->limits->size(); i++) {
                         const auto& rt = gen->limits->rule(i);
                         s.add({rt.config->id}, static_cast<double>(rt.tableStats().insertsRefused));
                       }
                     });

  registry_.callback("sluice_cache_lookups_total",
                     "Micro-cache answers by result: hit (fresh), stale (served stale), coalesced "
                     "(a waiter served the leader's response), miss.",
                     MetricType::kCounter, {"result"}, [server](MetricSampleSink& s) {
                       auto st = server->generation()->cache->stats();
                       s.add({"hit"}, static_cast<double>(st.hits));
                       s.add({"stale"}, static_cast<double>(st.stale));
                       s.add({"coalesced"}, static_cast<double>(st.coalescing.coalesced));
                       s.add({"miss"}, static_cast<double>(st.misses));
                     });
  registry_.callback("sluice_cache_bytes", "Bytes held by the micro-cache (entries, keys, bookkeeping).",
                     MetricType::kGauge, {}, [server](MetricSampleSink& s) {
                       s.add(static_cast<double>(server->generation()->cache->stats().bytes));
                     });
  registry_.callback("sluice_cache_entries", "Responses held by the micro-cache.", MetricType::kGauge, {},
                     [server](MetricSampleSink& s) {
                       s.add(static_cast<double>(server->generation()->cache->stats().entries));
                     });
  registry_.callback("sluice_cache_evictions_total", "Micro-cache entries evicted to make room (LRU).",
                     MetricType::kCounter, {}, [server](MetricSampleSink& s) {
                       s.add(static_cast<double>(server->generation()->cache->stats().evictions));
                     });
  registry_.callback("sluice_upstream_in_flight",
                     "Requests in flight to an upstream pool, all workers.", MetricType::kGauge,
                     {"upstream"}, [server](MetricSampleSink& s) {
                       for (const auto& c : server->generation()->clusters)
                         s.add({c->config().name}, static_cast<double>(c->active_requests.load()));
                     });
  registry_.callback("sluice_upstream_adaptive_limit",
                     "Current adaptive concurrency limit of a pool (pools with adaptive_concurrency).",
                     MetricType::kGauge, {"upstream"}, [server](MetricSampleSink& s) {
                       for (const auto& c : server->generation()->clusters)
                         if (const auto* a = c->gate().adaptive())
                           s.add({c->config().name}, static_cast<double>(a->limit()));
                     });
  registry_.callback("sluice_upstream_saturation_ratio",
                     "Load the application tier last reported (saturation header / capacity); "
                     "absent when no fresh report.",
                     MetricType::kGauge, {"upstream"}, [server](MetricSampleSink& s) {
                       Nanos now = SteadyClock::monotonicNanos();
                       for (const auto& c : server->generation()->clusters) {
                         double load = c->gate().saturation(now);
                         if (load >= 0) s.add({c->config().name}, load);
                       }
                     });

  // Per upstream server, from the current generation's process-wide server state.
  using Read = double (*)(const ServerState&, Nanos);
  struct PerServer {
    const char* name;
    const char* help;
    MetricType type;
    Read read;
  };
  static const PerServer kPerServer[] = {
      {"sluice_upstream_server_healthy",
       "1 while active health checks pass (or none are configured), else 0.", MetricType::kGauge,
       [](const ServerState& st, Nanos) { return st.healthy.load() ? 1.0 : 0.0; }},
      {"sluice_upstream_server_ejected",
       "1 while passive health checks (max_fails) have the server ejected, else 0.",
       MetricType::kGauge,
       [](const ServerState& st, Nanos now) { return st.ejected_until.load() > now ? 1.0 : 0.0; }},
      {"sluice_upstream_server_active_requests",
       "Requests in flight to the server, all workers.", MetricType::kGauge,
       [](const ServerState& st, Nanos) { return static_cast<double>(st.active.load()); }},
      {"sluice_upstream_server_requests_total",
       "Attempts sent to the server (a retried request counts once per server tried). Restarts "
       "from 0 when a reload changes the server's weight.",
       MetricType::kCounter,
       [](const ServerState& st, Nanos) { return static_cast<double>(st.requests.load()); }},
      {"sluice_upstream_server_failures_total",
       "Failures counted toward passive health (connect errors, timeouts, resets, bad responses).",
       MetricType::kCounter,
       [](const ServerState& st, Nanos) { return static_cast<double>(st.failures.load()); }},
  };
  for (const auto& m : kPerServer) {
    Read read = m.read;
    registry_.callback(m.name, m.help, m.type, {"upstream", "server"},
                       [server, read](MetricSampleSink& s) {
                         auto gen = server->generation();
                         Nanos now = SteadyClock::monotonicNanos();
                         for (const auto& c : gen->clusters)
                           for (size_t i = 0; i < c->size(); i++)
                             s.add({c->config().name, c->server(i).address}, read(c->server(i), now));
                       });
  }
}

}  // namespace sluice
