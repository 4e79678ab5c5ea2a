#include "proxy/server/generation.h"

#include <atomic>

namespace sluice {

namespace {
std::atomic<uint64_t> g_next_generation{1};
}

Generation::Generation(ConfigPtr cfg, const Generation* previous)
    : config(std::move(cfg)), router(*config), id(g_next_generation.fetch_add(1)) {
  for (const auto& u : config->upstreams) {
    const UpstreamCluster* old = nullptr;
    if (previous)
      for (const auto& c : previous->clusters)
        if (c->config().name == u.name) old = c.get();
    clusters.push_back(std::make_shared<UpstreamCluster>(u, old));
  }
  for (const auto& r : config->routes) {
    int idx = -1;
    for (size_t i = 0; i < config->upstreams.size(); i++)
      if (config->upstreams[i].name == r.upstream) idx = static_cast<int>(i);
    route_upstream.push_back(idx);
  }
}

WorkerGeneration::WorkerGeneration(GenerationPtr g, uv_loop_t* loop) : gen(std::move(g)) {
  for (const auto& c : gen->clusters) pools.push_back(std::make_shared<UpstreamPool>(c, loop));
}

}  // namespace sluice
