#include "proxy/server/generation.h"

#include "proxy/config/lua_config.h"
#include "proxy/server/controls.h"

#include <atomic>

namespace sluice {

namespace {
std::atomic<uint64_t> g_next_generation{1};
}

Generation::Generation(ConfigPtr cfg, const Generation* previous,
                       std::shared_ptr<ProxyMetrics> metrics)
    : config(std::move(cfg)),
      router(*config),
      id(g_next_generation.fetch_add(1)),
      metrics_owner(std::move(metrics)) {
  if (metrics_owner) this->metrics = metrics_owner->bind(*config);
  for (const auto& u : config->upstreams) {
    const UpstreamCluster* old = nullptr;
    if (previous)
      for (const auto& c : previous->clusters)
        if (c->config().name == u.name) old = c.get();
    clusters.push_back(std::make_shared<UpstreamCluster>(u, old));
  }
  limits = std::make_shared<LimitSet>(*config, previous ? previous->limits.get() : nullptr);
  for (const auto& sw : config->degrade_switches) degrade_switches.push_back(Controls::degradeSwitch(sw.name));
  if (previous && previous->cache) {
    cache = previous->cache;
  } else {
    cache::MicroCacheParams p;
    p.capacity_bytes = config->cache.memory;
    p.shards = config->cache.shards;
    cache = std::make_shared<cache::MicroCache>(p);
  }
  static const SteadyClock kDictClock;
  lua_dicts = previous && previous->lua_dicts ? previous->lua_dicts
                                              : std::make_shared<lua::SharedDicts>(kDictClock);
  if (config->lua)
    for (const auto& d : config->lua->shared_dicts) lua_dicts->getOrCreate(d.name, d.size);
  for (const auto& r : config->routes) {
    int idx = -1;
    for (size_t i = 0; i < config->upstreams.size(); i++)
      if (config->upstreams[i].name == r.upstream) idx = static_cast<int>(i);
    route_upstream.push_back(idx);
  }
}

WorkerGeneration::WorkerGeneration(GenerationPtr g, uv_loop_t* loop, size_t metrics_shard)
    : gen(std::move(g)) {
  if (metrics_shard < gen->metrics.size()) metrics = &gen->metrics[metrics_shard];
  for (size_t i = 0; i < gen->clusters.size(); i++) {
    pools.push_back(std::make_shared<UpstreamPool>(gen->clusters[i], loop));
    if (metrics) pools.back()->setIdleGauge(metrics->upstreams[i].idle_connections);
  }
}

}  // namespace sluice
