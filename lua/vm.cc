#include "lua/vm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "lua/bootstrap.lua.h"
#include "lua/request.h"
#include "lua/vm_internal.h"

extern "C" {
#include <luajit.h>
}

namespace sluice::lua {

const char* phaseName(Phase p) {
  switch (p) {
    case Phase::kInit: return "init";
    case Phase::kConfigure: return "configure";
    case Phase::kInitWorker: return "init_worker";
    case Phase::kTimer: return "timer";
    case Phase::kDestroy: return "destroy";
    case Phase::kRewrite: return "rewrite";
    case Phase::kAccess: return "access";
    case Phase::kAggregate: return "aggregate";
    case Phase::kBalancer: return "balancer";
    case Phase::kHeaderFilter: return "header_filter";
    case Phase::kBodyFilter: return "body_filter";
    case Phase::kLog: return "log";
    case Phase::kCount: break;
  }
  return "?";
}

namespace {

// Counts every byte the VM holds and refuses growth past the limit; LuaJIT turns the refusal
// into a "not enough memory" error in the running code, never a crash.
// LuaJIT passes a block's exact size back as osize, so a block of osize <= SmallBlocks::kMax is
// one SmallBlocks::take() made (its class's full size) and a larger one came from malloc.
void* limitedAlloc(void* ud, void* ptr, size_t osize, size_t nsize) {
  auto* core = static_cast<VmCore*>(ud);
  SmallBlocks& sb = core->small_blocks;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    if (ptr) {
      if (SmallBlocks::small(old)) sb.give(ptr, old);
      else std::free(ptr);
    }
    core->mem_used -= old;
    return nullptr;
  }
  if (nsize > old && core->mem_strict && core->mem_used + (nsize - old) > core->mem_limit) return nullptr;
  void* p;
  const bool shrink = ptr && nsize <= old;
  if (!ptr) {
    p = SmallBlocks::small(nsize) ? sb.take(nsize) : std::malloc(nsize);
  } else if (!SmallBlocks::small(old) && !SmallBlocks::small(nsize)) {
    p = std::realloc(ptr, nsize);
  } else if (SmallBlocks::small(old) && SmallBlocks::small(nsize) &&
             SmallBlocks::classOf(old) == SmallBlocks::classOf(nsize)) {
    p = ptr;  // still fits its block
  } else {
    p = SmallBlocks::small(nsize) ? sb.take(nsize) : std::malloc(nsize);
    if (p) {
      std::memcpy(p, ptr, std::min(old, nsize));
      if (SmallBlocks::small(old)) sb.give(ptr, old);
      else std::free(ptr);
    } else if (shrink) {
      p = ptr;  // Lua takes a shrink to never fail; the old block holds it (any class fits)
    }
  }
  if (p) core->mem_used = core->mem_used - old + nsize;
  return p;
}

// Interpreted code calls this every hook_instructions instructions: the hard stop for a
// runaway loop. (Compiled traces never call it; see VmOptions::jit.)
void budgetHook(lua_State* L, lua_Debug*) {
  VmCore* core = coreOf(L);
  if (core->deadline == 0) return;
  if (core->budget_hit || SteadyClock::monotonicNanos() > core->deadline) {
    if (!core->budget_hit) {
      core->budget_hit = true;
      // From now on fail at every instruction: a pcall in the policy catches this error, but
      // the very next instruction outside it fails again, so no pcall nesting can absorb it.
      lua_sethook(L, budgetHook, LUA_MASKCOUNT, 1);
    }
    luaL_error(L, "policy exceeded its time budget of %d ms",
               static_cast<int>(core->options.budget / kMillis));
  }
}

// Message handler: error text plus a traceback, for the error log.
int tracebackHandler(lua_State* L) {
  const char* msg = lua_tostring(L, 1);
  if (!msg) msg = "(error object is not a string)";
  luaL_traceback(L, L, msg, 1);
  return 1;
}

int compileModule(lua_State* L) {
  VmCore* core = coreOf(L);
  size_t n;
  const char* name = luaL_checklstring(L, 1, &n);
  std::string file(name, n);
  std::replace(file.begin(), file.end(), '.', '/');
  file += ".lua";
  const auto& files = core->bundle->files();
  auto f = files.find(file);
  if (f == files.end()) {
    lua_pushnil(L);
    lua_pushfstring(L, "no module '%s' in the policy bundle", name);
    return 2;
  }
  std::string chunk = "@" + f->second.name;
  // Text only: precompiled bytecode can break the VM's memory safety.
  if (luaL_loadbufferx(L, f->second.source.data(), f->second.source.size(), chunk.c_str(), "t")) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  return 1;
}

int compileText(lua_State* L) {
  size_t n;
  const char* s = luaL_checklstring(L, 1, &n);
  const char* name = luaL_optstring(L, 2, "=loadstring");
  if (luaL_loadbufferx(L, s, n, name, "t")) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  return 1;
}

void openLib(lua_State* L, lua_CFunction fn, const char* name) {
  lua_pushcfunction(L, fn);
  lua_pushstring(L, name);
  lua_call(L, 1, 0);
}

// pcall under the budget, with the current phase set; returns the error text or "".
std::string protectedCall(VmCore* core, Phase phase, int nargs, int nresults, bool* overran) {
  lua_State* L = core->L;
  int base = lua_gettop(L) - nargs;  // the function's slot
  lua_rawgeti(L, LUA_REGISTRYINDEX, core->traceback_ref);
  lua_insert(L, base);
  Phase saved = core->phase;
  core->phase = phase;
  budgetStart(core);
  int rc = lua_pcall(L, nargs, nresults, base);
  bool over = budgetStop(core);
  core->phase = saved;
  if (overran) *overran = over;
  std::string err;
  if (rc != 0) {
    err = formatError(L, -1);
    lua_pop(L, 1);
  } else if (over) {
    lua_pop(L, nresults);
    err = "policy exceeded its time budget of " + std::to_string(core->options.budget / kMillis) +
          " ms";
  }
  lua_remove(L, base);
  return err;
}

// Runs a timer callback: fn(premature, args...).
void fireTimer(VmCore* core, uint64_t id, bool premature) {
  auto it = core->timers.find(id);
  if (it == core->timers.end()) return;
  LuaTimer t = it->second;
  bool again = !premature && t.interval > 0 && !core->retired;
  if (again) {
    it->second.armed = false;
  } else {
    core->timers.erase(it);
  }
  lua_State* L = core->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t.fn_ref);
  lua_pushboolean(L, premature);
  int n = 1;
  if (t.args_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, t.args_ref);
    int count = static_cast<int>(lua_objlen(L, -1));
    lua_checkstack(L, count + 2);
    for (int i = 1; i <= count; i++) lua_rawgeti(L, -1 - (i - 1), i);
    lua_remove(L, -1 - count);
    n += count;
  }
  std::string err = protectedCall(core, Phase::kTimer, n, 0, nullptr);
  if (!err.empty() && core->worker) core->worker->log(LogLevel::kError, "lua timer: " + err);
  if (again) {
    auto f = core->timers.find(id);
    if (f != core->timers.end() && core->committed && core->worker) {
      std::weak_ptr<WorkerVm> self = core->self;
      f->second.armed = true;
      f->second.host_id = core->worker->startTimer(t.interval, [self, id] {
        if (auto vm = self.lock()) fireTimer(&vm->core(), id, false);
      });
    }
  } else {
    luaL_unref(L, LUA_REGISTRYINDEX, t.fn_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, t.args_ref);
  }
}

void armTimer(VmCore* core, uint64_t id) {
  auto& t = core->timers[id];
  std::weak_ptr<WorkerVm> self = core->self;
  t.armed = true;
  t.host_id = core->worker->startTimer(t.delay, [self, id] {
    if (auto vm = self.lock()) fireTimer(&vm->core(), id, false);
  });
}

}  // namespace

std::string formatError(lua_State* L, int idx) {
  const char* s = lua_tostring(L, idx);
  return s ? s : "(error object is not a string)";
}

void budgetStart(VmCore* core) {
  core->budget_hit = false;
  core->mem_strict = true;
  core->deadline = SteadyClock::monotonicNanos() + core->options.budget;
}

bool budgetStop(VmCore* core) {
  bool over = core->budget_hit || SteadyClock::monotonicNanos() > core->deadline;
  if (core->budget_hit)
    lua_sethook(core->L, budgetHook, LUA_MASKCOUNT,
                static_cast<int>(core->options.hook_instructions));
  core->deadline = 0;
  core->budget_hit = false;
  core->mem_strict = false;
  return over;
}

bool addTimer(VmCore* core, Nanos delay, Nanos interval, int fn_ref, int args_ref) {
  if (core->timers.size() >= core->options.max_timers || core->retired) return false;
  uint64_t id = core->next_timer++;
  LuaTimer t;
  t.fn_ref = fn_ref;
  t.args_ref = args_ref;
  t.delay = delay;
  t.interval = interval;
  core->timers[id] = t;
  if (core->committed && core->worker) armTimer(core, id);
  return true;
}

VmCore::~VmCore() {
  if (L) lua_close(L);
}

WorkerVm::~WorkerVm() {
  if (core_ && core_->worker) {
    for (auto& [id, t] : core_->timers)
      if (t.armed) core_->worker->cancelTimer(t.host_id);
  }
}

WorkerVmPtr WorkerVm::prepare(PolicyBundlePtr bundle, const VmOptions& options,
                              WorkerHost* worker, SharedDictsPtr dicts,
                              std::vector<std::string>* errors, Mode mode) {
  WorkerVmPtr vm(new WorkerVm());
  vm->bundle_ = std::move(bundle);
  vm->core_ = std::make_unique<VmCore>();
  VmCore* core = vm->core_.get();
  core->options = options;
  core->worker = mode == Mode::kWorker ? worker : nullptr;
  core->dicts = std::move(dicts);
  core->mode = mode;
  core->bundle = vm->bundle_.get();
  core->self = vm;
  core->mem_limit = options.memory_limit;
  core->small_blocks.keep = options.small_block_cache;
  if (!vm->build(errors)) return nullptr;
  return vm;
}

bool WorkerVm::build(std::vector<std::string>* errors) {
  VmCore* core = core_.get();
  lua_State* L = lua_newstate(limitedAlloc, core);
  if (!L) {
    errors->push_back("cannot create a Lua state (memory limit too small?)");
    return false;
  }
  core->L = L;
  // luaopen_jit initialises the compiler (CPU flags, hot-loop parameters); without it the
  // engine never compiles anything. Its table stays out of every sandbox environment.
  openLib(L, luaopen_jit, LUA_JITLIBNAME);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | (core->options.jit ? LUAJIT_MODE_ON : LUAJIT_MODE_OFF));
  // Only what the sandbox hands out, plus debug and jit for the trusted bootstrap.
  openLib(L, luaopen_base, "");
  openLib(L, luaopen_table, LUA_TABLIBNAME);
  openLib(L, luaopen_string, LUA_STRLIBNAME);
  openLib(L, luaopen_math, LUA_MATHLIBNAME);
  openLib(L, luaopen_os, LUA_OSLIBNAME);
  openLib(L, luaopen_bit, LUA_BITLIBNAME);
  openLib(L, luaopen_debug, LUA_DBLIBNAME);
  lua_sethook(L, budgetHook, LUA_MASKCOUNT, static_cast<int>(core->options.hook_instructions));

  lua_pushcfunction(L, tracebackHandler);
  core->traceback_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  // Bootstrap(C, api) -> M
  if (luaL_loadbuffer(L, kBootstrapLua, strlen(kBootstrapLua), "=sluice_bootstrap")) {
    errors->push_back("bootstrap: " + formatError(L, -1));
    return false;
  }
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, compileModule);
  lua_setfield(L, -2, "compile_module");
  lua_pushcfunction(L, compileText);
  lua_setfield(L, -2, "compile_text");
  registerApi(L);
  if (lua_pcall(L, 2, 1, 0)) {
    errors->push_back("bootstrap: " + formatError(L, -1));
    return false;
  }
  core->boot_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  // Load every file (policies and libraries alike) through require, in name order.
  std::map<std::string, size_t, std::less<>> by_name;
  for (const auto& [file, src] : bundle_->files()) {
    if (file.size() < 5 || file.compare(file.size() - 4, 4, ".lua") != 0) continue;
    std::string module = file.substr(0, file.size() - 4);
    std::replace(module.begin(), module.end(), '/', '.');
    lua_rawgeti(L, LUA_REGISTRYINDEX, core->boot_ref);
    lua_getfield(L, -1, "require");
    lua_remove(L, -2);
    lua_pushlstring(L, module.data(), module.size());
    bool over = false;
    std::string err = protectedCall(core, Phase::kInit, 1, 1, &over);
    if (over) {
      errors->push_back(file + ": top level exceeded its time budget of " +
                        std::to_string(core->options.budget / kMillis) + " ms");
      continue;
    }
    if (!err.empty()) {
      // The traceback would only show the bootstrap's require; the message has file:line.
      errors->push_back(err.substr(0, err.find("\nstack traceback:")));
      continue;
    }
    // A module returning a table with `phases` is a policy; anything else is a library.
    if (lua_type(L, -1) != LUA_TTABLE) {
      lua_pop(L, 1);
      continue;
    }
    lua_getfield(L, -1, "phases");
    bool is_policy = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!is_policy) {
      lua_pop(L, 1);
      continue;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, core->boot_ref);
    lua_getfield(L, -1, "check_policy");
    lua_remove(L, -2);
    lua_pushvalue(L, -2);
    lua_call(L, 1, 1);
    if (!lua_isnil(L, -1)) {
      errors->push_back(file + ": " + formatError(L, -1));
      lua_pop(L, 2);
      continue;
    }
    lua_pop(L, 1);
    Policy p;
    p.handler_ref.fill(LUA_NOREF);
    p.file = file;
    lua_getfield(L, -1, "name");
    p.name = lua_tostring(L, -1);
    lua_getfield(L, -2, "version");
    if (lua_isstring(L, -1)) p.version = lua_tostring(L, -1);
    lua_getfield(L, -3, "priority");
    p.priority = static_cast<int>(lua_tointeger(L, -1));
    lua_pop(L, 3);
    if (by_name.count(p.name)) {
      errors->push_back(file + ": policy name '" + p.name + "' is already used by " +
                        core->policies[by_name[p.name]].file);
      lua_pop(L, 1);
      continue;
    }
    lua_getfield(L, -1, "phases");
    for (size_t i = static_cast<size_t>(Phase::kRewrite); i < static_cast<size_t>(Phase::kCount);
         i++) {
      lua_getfield(L, -1, phaseName(static_cast<Phase>(i)));
      if (lua_isfunction(L, -1))
        p.handler_ref[i] = luaL_ref(L, LUA_REGISTRYINDEX);
      else
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_getfield(L, -1, "init_worker");
    if (lua_isfunction(L, -1)) p.init_worker_ref = luaL_ref(L, LUA_REGISTRYINDEX); else lua_pop(L, 1);
    lua_getfield(L, -1, "destroy");
    if (lua_isfunction(L, -1)) p.destroy_ref = luaL_ref(L, LUA_REGISTRYINDEX); else lua_pop(L, 1);
    p.module_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    by_name[p.name] = core->policies.size();
    core->policies.push_back(std::move(p));
  }

  // Attachments: config -> schema (defaults filled) -> configure() -> per-phase chains.
  JsonLimits json = core->options.json;
  for (const auto& route : bundle_->routes()) {
    std::vector<ChainEntry> entries;
    for (const auto& a : route.policies) {
      std::string where = (a.where.empty() ? std::string("route") : a.where) + ": route '" +
                          route.route + "' policy '" + a.policy + "': ";
      auto f = by_name.find(a.policy);
      if (f == by_name.end()) {
        errors->push_back(where + "no such policy");
        continue;
      }
      Policy& p = core->policies[f->second];
      std::string jerr;
      if (a.config_json.empty()) {
        lua_newtable(L);
      } else if (!jsonDecode(L, a.config_json, json, &jerr)) {
        errors->push_back(where + "config is not valid JSON: " + jerr);
        continue;
      }
      if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        errors->push_back(where + "config must be an object");
        continue;
      }
      lua_rawgeti(L, LUA_REGISTRYINDEX, core->boot_ref);
      lua_getfield(L, -1, "apply_schema");
      lua_remove(L, -2);
      lua_rawgeti(L, LUA_REGISTRYINDEX, p.module_ref);
      lua_getfield(L, -1, "schema");
      lua_remove(L, -2);
      lua_pushvalue(L, -3);
      lua_call(L, 2, 2);
      if (lua_isnil(L, -2)) {
        errors->push_back(where + "config " + formatError(L, -1));
        lua_pop(L, 3);
        continue;
      }
      lua_pop(L, 1);
      lua_remove(L, -2);
      // configure(conf) may return a replacement (precomputed) config, or nil, err.
      lua_rawgeti(L, LUA_REGISTRYINDEX, p.module_ref);
      lua_getfield(L, -1, "configure");
      lua_remove(L, -2);
      if (lua_isfunction(L, -1)) {
        lua_pushvalue(L, -2);
        std::string err = protectedCall(core, Phase::kConfigure, 1, 2, nullptr);
        if (!err.empty()) {
          errors->push_back(where + "configure failed: " + err);
          lua_pop(L, 1);
          continue;
        }
        if (lua_isnil(L, -2) && !lua_isnil(L, -1)) {
          errors->push_back(where + "configure rejected the config: " + formatError(L, -1));
          lua_pop(L, 3);
          continue;
        }
        lua_pop(L, 1);
        if (lua_istable(L, -1))
          lua_replace(L, -2);
        else
          lua_pop(L, 1);
      } else {
        lua_pop(L, 1);
      }
      entries.push_back(ChainEntry{f->second, luaL_ref(L, LUA_REGISTRYINDEX), LUA_NOREF});
    }
    // Higher priority first (like APISIX), ties by name so the order never depends on YAML order.
    std::stable_sort(entries.begin(), entries.end(), [&](const ChainEntry& a, const ChainEntry& b) {
      const Policy& pa = core->policies[a.policy];
      const Policy& pb = core->policies[b.policy];
      if (pa.priority != pb.priority) return pa.priority > pb.priority;
      return pa.name < pb.name;
    });
    RouteChain chain;
    for (auto e : entries) {
      for (size_t i = 0; i < static_cast<size_t>(Phase::kCount); i++) {
        int h = core->policies[e.policy].handler_ref[i];
        if (h == LUA_NOREF) continue;
        e.handler_ref = h;
        chain.phases[i].push_back(e);
      }
    }
    core->routes[route.route] = std::move(chain);
  }
  if (!errors->empty()) return false;

  if (core->mode == Mode::kWorker) {
    for (auto& p : core->policies) {
      if (p.init_worker_ref == LUA_NOREF) continue;
      lua_rawgeti(L, LUA_REGISTRYINDEX, p.init_worker_ref);
      std::string err = protectedCall(core, Phase::kInitWorker, 0, 0, nullptr);
      if (!err.empty()) errors->push_back(p.file + ": init_worker failed: " + err);
    }
  }
  lua_gc(L, LUA_GCCOLLECT, 0);
  return errors->empty();
}

void WorkerVm::commit() {
  if (committed_) return;
  committed_ = true;
  core_->committed = true;
  if (!core_->worker) return;
  for (auto& [id, t] : core_->timers)
    if (!t.armed) armTimer(core_.get(), id);
}

void WorkerVm::retire() {
  if (retired_) return;
  retired_ = true;
  VmCore* core = core_.get();
  core->retired = true;
  std::vector<uint64_t> ids;
  for (auto& [id, t] : core->timers) {
    if (t.armed && core->worker) core->worker->cancelTimer(t.host_id);
    t.armed = false;
    ids.push_back(id);
  }
  for (uint64_t id : ids) fireTimer(core, id, true);
  for (auto& p : core->policies) {
    if (p.destroy_ref == LUA_NOREF) continue;
    lua_rawgeti(core->L, LUA_REGISTRYINDEX, p.destroy_ref);
    std::string err = protectedCall(core, Phase::kDestroy, 0, 0, nullptr);
    if (!err.empty() && core->worker)
      core->worker->log(LogLevel::kError, p.file + ": destroy failed: " + err);
  }
}

LuaRequestPtr WorkerVm::newRequest(RequestHost& host, std::string_view route) {
  auto f = core_->routes.find(std::string(route));
  return std::make_unique<LuaRequest>(shared_from_this(), host,
                                      f == core_->routes.end() ? nullptr : &f->second);
}

const RouteChain* WorkerVm::routeChain(std::string_view route) const {
  auto f = core_->routes.find(std::string(route));
  return f == core_->routes.end() ? nullptr : &f->second;
}

LuaRequestPtr WorkerVm::newRequest(RequestHost& host, const RouteChain* chain) {
  return std::make_unique<LuaRequest>(shared_from_this(), host, chain);
}

bool WorkerVm::routeHasPhase(std::string_view route, Phase phase) const {
  auto f = core_->routes.find(std::string(route));
  return f != core_->routes.end() && !f->second.phases[static_cast<size_t>(phase)].empty();
}

size_t WorkerVm::memoryBytes() const { return core_->mem_used; }

size_t WorkerVm::pendingTimers() const { return core_->timers.size(); }

std::vector<PolicyInfo> WorkerVm::policies() const {
  std::vector<PolicyInfo> out;
  for (const auto& p : core_->policies) {
    PolicyInfo i;
    i.name = p.name;
    i.version = p.version;
    i.file = p.file;
    i.priority = p.priority;
    i.overruns = p.overruns;
    i.errors = p.errors;
    i.disabled = p.disabled;
    out.push_back(std::move(i));
  }
  return out;
}

}  // namespace sluice::lua
