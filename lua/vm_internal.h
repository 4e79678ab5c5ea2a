#pragma once
// State shared by vm.cc, request.cc and api.cc. Not part of the public API.
#include <array>
#include <cstdlib>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include <lua.hpp>

#include "lua/request.h"
#include "lua/vm.h"

namespace sluice::lua {

struct Policy {
  std::string name;
  std::string version;
  std::string file;
  int priority = 0;
  int module_ref = LUA_NOREF;
  std::array<int, static_cast<size_t>(Phase::kCount)> handler_ref;
  int init_worker_ref = LUA_NOREF;
  int destroy_ref = LUA_NOREF;
  int overruns = 0;
  uint64_t errors = 0;
  bool disabled = false;
};

struct ChainEntry {
  size_t policy;  // index into VmCore::policies
  int conf_ref;
  int handler_ref;
};

struct RouteChain {
  std::array<std::vector<ChainEntry>, static_cast<size_t>(Phase::kCount)> phases;
};

struct LuaTimer {
  int fn_ref = LUA_NOREF;
  int args_ref = LUA_NOREF;  // table of extra arguments
  Nanos interval = 0;        // > 0: timer.every
  Nanos delay = 0;
  OperationId host_id = 0;
  bool armed = false;
  PolicyInfo* unused = nullptr;
};

// Field names the sub-request bindings read and write on every call, interned once per VM and
// kept in the registry: lua_getfield/lua_setfield hash and look up their C string each time
// (~27 times per http.multi of three).
enum class ApiKey : uint8_t { kPool, kMethod, kPath, kHeaders, kBody, kTimeout, kStatus, kErr, kCount };

// Free lists of the VM's small blocks, by 16-byte size class, in front of malloc. Most of what a
// request allocates in Lua (strings, tables, their array and hash parts) is small and dies
// young: ~100 blocks per item_page, whose malloc/realloc/free in glibc cost ~13k instructions
// (its per-thread cache keeps 7 blocks a size, and the GC frees in bursts of a whole cycle's
// garbage). Bounded by VmOptions::small_block_cache bytes, past which blocks go back to malloc.
struct SmallBlocks {
  static constexpr size_t kGranule = 16;
  static constexpr size_t kMax = 256;  // larger blocks go to malloc directly
  static constexpr size_t kClasses = kMax / kGranule;
  struct Free {
    Free* next;
  };
  size_t keep = 0;   // most bytes held on the lists
  size_t bytes = 0;  // held on the lists now
  Free* head[kClasses] = {};

  SmallBlocks() = default;
  SmallBlocks(const SmallBlocks&) = delete;
  SmallBlocks& operator=(const SmallBlocks&) = delete;
  ~SmallBlocks() {
    for (Free* f : head)
      while (f) {
        Free* next = f->next;
        std::free(f);
        f = next;
      }
  }
  static bool small(size_t n) { return n <= kMax; }
  static size_t classOf(size_t n) { return (n - 1) / kGranule; }  // n in [1, kMax]
  // A block of at least n bytes (n <= kMax): a block of its class's full size, so any later
  // block of the same class fits in it.
  void* take(size_t n) {
    const size_t k = classOf(n);
    if (Free* f = head[k]) {
      head[k] = f->next;
      bytes -= (k + 1) * kGranule;
      return f;
    }
    return std::malloc((k + 1) * kGranule);
  }
  void give(void* p, size_t n) {
    const size_t k = classOf(n);
    if (bytes + (k + 1) * kGranule > keep) {
      std::free(p);
      return;
    }
    Free* f = static_cast<Free*>(p);
    f->next = head[k];
    head[k] = f;
    bytes += (k + 1) * kGranule;
  }
};

struct VmCore {
  lua_State* L = nullptr;
  VmOptions options;
  WorkerHost* worker = nullptr;
  SharedDictsPtr dicts;
  WorkerVm::Mode mode = WorkerVm::Mode::kWorker;
  const PolicyBundle* bundle = nullptr;
  bool committed = false;
  bool retired = false;
  std::weak_ptr<WorkerVm> self;

  // Allocator accounting (lua_Alloc ud is this struct, so bindings find it via lua_getallocf).
  size_t mem_used = 0;
  size_t mem_limit = 0;
  SmallBlocks small_blocks;  // after lua_close in ~VmCore, which hands every block back
  // The limit applies only while policy code runs: a refusal outside a protected call (the
  // host pushing results) would be an unprotected error, which LuaJIT turns into abort().
  bool mem_strict = false;

  // What is running now.
  Phase phase = Phase::kInit;
  LuaRequest* request = nullptr;
  Nanos deadline = 0;  // 0: no budget
  bool budget_hit = false;

  int traceback_ref = LUA_NOREF;
  std::array<int, static_cast<size_t>(ApiKey::kCount)> key_refs{};
  int boot_ref = LUA_NOREF;  // the bootstrap's export table (require, schema, ...)

  std::vector<Policy> policies;
  std::unordered_map<std::string, RouteChain> routes;
  std::vector<int> free_threads;  // registry refs of clean coroutines for reuse
  // Registry refs for requests' ctx tables, reused: a finished request's slot holds `false`
  // (never nil, so luaL_ref's array border never hands the number out again) until the next
  // request stores its new table there. luaL_ref/luaL_unref per request cost ~300 instructions.
  std::vector<int> free_ctx_refs;

  // sluice.json.encode's output buffer, kept between calls (a page document grew through five
  // reallocations per call). Encoding runs no Lua code, so it is never used re-entrantly.
  std::string json_out;

  // The parts of the http.request/http.multi being started (lua/api.cc): kept so a call
  // allocates nothing for them. Never in use twice at once: those bindings refuse to run where
  // they could not yield, which is where a metamethod they trigger would call them.
  std::vector<SubrequestSpec> spec_scratch;
  std::vector<HeaderView> spec_headers;
  std::vector<uint32_t> spec_header_at;  // per part: its header table's stack index, then count
  std::vector<HeaderView> exit_headers;   // sluice.resp.exit's, the same way

  std::map<uint64_t, LuaTimer> timers;
  uint64_t next_timer = 1;

  ~VmCore();
};

inline VmCore* coreOf(lua_State* L) {
  void* ud = nullptr;
  lua_getallocf(L, &ud);
  return static_cast<VmCore*>(ud);
}

// api.cc
void registerApi(lua_State* L);  // pushes the raw `sluice` table (and interns the ApiKeys)
inline void pushKey(lua_State* L, const VmCore* c, ApiKey k) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->key_refs[static_cast<size_t>(k)]);
}
// vm.cc
std::string formatError(lua_State* L, int idx);
// Starts/stops the budget clock around a call into Lua.
void budgetStart(VmCore* core);
bool budgetStop(VmCore* core);  // true if it overran
// Schedules a timer (timer.at/every); false when the cap is reached.
bool addTimer(VmCore* core, Nanos delay, Nanos interval, int fn_ref, int args_ref);

}  // namespace sluice::lua
