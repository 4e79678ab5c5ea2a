#pragma once
// A configuration generation: the immutable config plus what is built from it once and shared
// by all workers (router, upstream clusters with their health atomics). Each worker then builds
// its own WorkerGeneration (connection pools) from it. Requests hold the WorkerGeneration they
// started with, so a reload never changes the rules under a request in flight.
#include <memory>
#include <vector>

#include "lua/shared_dict.h"
#include "lua/vm.h"
#include "proxy/config/config.h"
#include "proxy/cache/micro_cache.h"
#include "proxy/limit/limit_set.h"
#include "proxy/router/router.h"
#include "proxy/server/proxy_metrics.h"
#include "proxy/upstream/upstream_cluster.h"
#include "proxy/upstream/upstream_pool.h"

namespace sluice {

struct Generation {
  // `previous` (may be null) lends its servers' health state to servers that stay, so a
  // reload neither forgets an ejection nor resets a server's counters.
  // `metrics` (may be null) gets this config's route and upstream series bound per worker.
  Generation(ConfigPtr cfg, const Generation* previous = nullptr,
             std::shared_ptr<ProxyMetrics> metrics = nullptr);
  ConfigPtr config;
  Router router;
  std::vector<UpstreamClusterPtr> clusters;  // same order as config->upstreams
  std::vector<int> route_upstream;           // route index -> cluster index, -1 for direct routes
  std::shared_ptr<LimitSet> limits;          // limit rules' state, carried over reloads
  // The micro-cache all routes share: created with the first generation (sized by its `cache:`
  // section) and handed to every later one, so entries survive reloads.
  std::shared_ptr<cache::MicroCache> cache;
  // Lua shared dicts (sluice.shared.NAME): process-wide, handed from generation to generation so
  // their contents survive reloads; created on first use of a name.
  lua::SharedDictsPtr lua_dicts;
  // The admin API's degrade switches (Controls), same order as config->degrade_switches.
  std::vector<const std::atomic<bool>*> degrade_switches;
  uint64_t id = 0;
  std::shared_ptr<ProxyMetrics> metrics_owner;  // keeps the cells `metrics` points into alive
  std::vector<WorkerMetrics> metrics;           // per shard (ProxyMetrics::shardOf); empty if off
};
using GenerationPtr = std::shared_ptr<const Generation>;

struct WorkerGeneration {
  // `metrics_shard`: where this worker's metrics go (ProxyMetrics::shardOf its id).
  WorkerGeneration(GenerationPtr g, uv_loop_t* loop, size_t metrics_shard = 0);
  GenerationPtr gen;
  std::vector<std::shared_ptr<UpstreamPool>> pools;  // same order as gen->clusters
  const WorkerMetrics* metrics = nullptr;            // this worker's handles; null if off
  // This worker's Lua VM for the generation (null without Lua policies). Prepared by
  // Worker::prepareGeneration, committed by Worker::commitGeneration; a bundle equal to the
  // previous generation's (LuaSettings::hash) reuses the running VM.
  lua::WorkerVmPtr vm;
  bool vm_reused = false;
  std::vector<uint8_t> lua_route_phases;  // route index -> LuaRouteMask bits (lua_phase.h)
  // route index -> its policy chain in `vm` (null: none), so a request skips the lookup by name
  std::vector<const lua::RouteChain*> lua_route_chains;
};
using WorkerGenerationPtr = std::shared_ptr<WorkerGeneration>;

}  // namespace sluice
