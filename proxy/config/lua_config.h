#pragma once
// The `lua:` section (docs/configuration.md) and the routes' `policies:` attachments, parsed by
// proxy/config/lua_section.cc into one immutable LuaSettings held by the Config. The bundle in
// it has been validated (compiled, top levels run, schemas checked) before any worker sees it.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.h"
#include "lua/policy_bundle.h"
#include "lua/vm.h"

namespace sluice {

struct LuaSharedDictConfig {
  std::string name;
  uint64_t size = 1 << 20;  // bytes; fixed at first creation (a reload cannot resize)
};

struct LuaSettings {
  std::string policies_dir;        // as written (relative to the working directory)
  lua::VmOptions vm;               // memory, time budget, jit, sub-request caps
  std::vector<LuaSharedDictConfig> shared_dicts;
  // Old generations' VMs live while requests use them, but at most `max_generations` VMs per
  // worker (the oldest is then cancelled) and never longer than `retire_timeout`.
  uint32_t max_generations = 4;
  Nanos retire_timeout = 60 * kSeconds;
  Nanos prepare_timeout = 5 * kSeconds;  // a reload aborts when a worker takes longer to prepare
  lua::PolicyBundlePtr bundle;      // validated
  uint64_t bundle_hash = 0;
  std::vector<lua::PolicyInfo> policies;  // from validation: name, version, file, priority
  std::vector<std::string> aggregate_routes;  // routes whose content is a Lua aggregate handler
  // Hash of everything that changes what a worker builds (bundle + VM options + dicts).
  uint64_t hash = 0;
};

}  // namespace sluice
