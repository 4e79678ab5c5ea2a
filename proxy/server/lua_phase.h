#pragma once
// The Lua policy hooks (docs/lua-api.md): access (after risk, may answer or suspend while
// sub-requests run), aggregate (the content of aggregation routes), the response filters
// (header_filter, body_filter) and log.
// A feature unit: ClientConnection calls these and knows nothing else about Lua.
//
// LuaWorkerRuntime is the per-worker half: the WorkerHost (timers on the worker's loop, the
// error log), the VMs of retired generations still finishing requests (capped in number and
// age), and a snapshot of VM statistics the control thread reads for /lua and /metrics.
#include <uv.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "lua/host.h"
#include "lua/request.h"
#include "lua/vm.h"
#include "proxy/server/phase_result.h"

namespace sluice {

class ClientConnection;
class HeaderMap;
class Worker;
struct Exchange;
struct RouteConfig;
struct LuaExchangeState;  // per request, defined in lua_phase.cc

class LuaPhase {
 public:
  // kSuspended: the policy yielded; the phase calls ClientConnection::resumeAfterAccess() (or
  // answers) later, from the connection's loop.
  static PhaseResult access(ClientConnection& conn, const RouteConfig& route);
  // Before the limit phase: the route's rewrite handlers. kSuspended: resumeAfterRewrite() later.
  static PhaseResult rewrite(ClientConnection& conn, const RouteConfig& route);
  // Before the content phase picks an upstream server: the route's balancer handler may name one
  // of the pool's servers ("host:port"). kContinue with *server the index, or -1 to balance as
  // configured (no handler, no answer, a peer not in the pool, or one tried / unavailable);
  // kAnswered when the handler failed (500, like every policy error).
  static PhaseResult balancer(ClientConnection& conn, const RouteConfig& route, int* server);
  // The keys rewrite handlers set (sluice.limit.set_key) for lua:NAME limit sources; null if none.
  static const std::vector<std::pair<std::string, std::string>>* limitKeys(const Exchange& e);
  // The points rewrite handlers added (sluice.risk.add) for the risk phase to score, as
  // ("lua.NAME", points) summed per name; null if none.
  static const std::vector<std::pair<std::string, int>>* riskSignals(const Exchange& e);
  // Content of a route whose response a Lua aggregate handler produces. kContinue when the route
  // has none (then the upstream is used).
  static PhaseResult aggregate(ClientConnection& conn, const RouteConfig& route);
  static void log(ClientConnection& conn);

  // Response filters (docs/lua-api.md, "Response filters"). `filters` is the route's
  // kLuaHeaderFilter / kLuaBodyFilter bits, computed at prepare time (plus kLuaHeaderFilter when
  // an earlier phase queued resp.set_header): 0 costs the caller nothing more.
  static uint8_t filters(const Exchange& e);
  // header_filter over the response head before it is serialized; applies the queued
  // resp.set_header first. A handler error is logged and counted, and the head goes out as it
  // was before the phase.
  static void headerFilter(ClientConnection& conn, int* status, HeaderMap* headers);
  // One body chunk through body_filter (after headerFilter). false: a handler failed (logged,
  // counted); the caller must not send the chunk.
  static bool bodyFilter(ClientConnection& conn, std::string* chunk, bool eof);

 private:
  friend struct LuaExchangeState;
  friend class LuaSubrequest;
  friend class LuaWorkerRuntime;
  static LuaExchangeState* ensureState(ClientConnection& conn, const RouteConfig& route,
                                       uint8_t route_mask);
  static PhaseResult handle(ClientConnection& conn, LuaExchangeState& st, lua::RunResult r);
  static void onResume(const std::weak_ptr<LuaExchangeState>& w);
  static void closeConnection(ClientConnection& conn);
};

// Which phases a route's policies have (WorkerGeneration::lua_route_phases), so a request on a
// route without policies costs one byte read.
enum LuaRouteMask : uint8_t {
  kLuaAccess = 1,
  kLuaAggregate = 2,
  kLuaLog = 4,
  kLuaHeaderFilter = 8,
  kLuaBodyFilter = 16,
  kLuaRewrite = 32,
  kLuaBalancer = 64,
  kLuaAny = 0x80,
};

// Statistics of one worker's VMs, copied out by the worker for the control thread.
struct LuaWorkerStats {
  uint64_t generation = 0;
  size_t memory_bytes = 0;         // current VM
  size_t retired_vms = 0;          // old generations' VMs still finishing requests
  size_t retired_memory_bytes = 0;
  std::vector<lua::PolicyInfo> policies;
  uint64_t requests_cancelled = 0;  // by the retire deadline / generation cap
};

class LuaWorkerRuntime final : public lua::WorkerHost {
 public:
  LuaWorkerRuntime(Worker* worker, uv_loop_t* loop);
  ~LuaWorkerRuntime() override;

  // lua::WorkerHost
  Nanos now() const override;
  lua::OperationId startTimer(Nanos delay, lua::TimerCallback fn) override;
  void cancelTimer(lua::OperationId id) override;
  void log(LogLevel level, std::string_view message) override;

  // A generation's VM was replaced: retire it (timers premature, destroy()) and keep watching
  // it until its last request ends; past the cap or the deadline its requests are cancelled.
  void retireVm(lua::WorkerVmPtr vm, uint32_t max_generations, Nanos retire_timeout);
  // Request states register so a retired VM's stragglers can be found.
  void track(LuaExchangeState* s);
  void untrack(LuaExchangeState* s);
  void publish(const lua::WorkerVmPtr& current, uint64_t generation);
  // Step 3 of the coroutine protocol (lua/host.h): resumes `st` from this loop's check phase,
  // right after the poll that completed its last sub-request, on a fresh stack. Worker::post
  // did it with a mutex, a heap-allocated std::function and an eventfd write and read (two
  // syscalls per suspended request). An idle handle keeps the next poll from blocking while
  // resumes are queued, for the ones scheduled outside the poll phase (timers: a sub-request
  // timeout, sluice.sleep); it is stopped again in the same turn when scheduled from I/O.
  void scheduleResume(std::weak_ptr<LuaExchangeState> st);
  LuaWorkerStats stats() const;
  void close();  // worker shutdown: timers closed

 private:
  struct Timer;
  struct Retired {
    std::weak_ptr<lua::WorkerVm> vm;
    Nanos deadline;
  };
  static void onSweep(uv_timer_t* t);
  static void onResumeCheck(uv_check_t* h);
  void sweep();
  void cancelRequestsOn(const lua::WorkerVm* vm);

  Worker* worker_;
  uv_loop_t* loop_;
  uv_timer_t* sweep_timer_ = nullptr;
  uv_check_t* resume_check_ = nullptr;
  uv_idle_t* resume_idle_ = nullptr;
  bool resume_armed_ = false;
  // Queued resumes and the batch being run (swapped, so both keep their capacity).
  std::vector<std::weak_ptr<LuaExchangeState>> resumes_;
  std::vector<std::weak_ptr<LuaExchangeState>> resuming_;
  lua::OperationId next_id_ = 1;
  std::map<lua::OperationId, Timer*> timers_;
  std::vector<Retired> retired_;
  std::vector<LuaExchangeState*> states_;
  lua::WorkerVmPtr current_;
  uint64_t generation_ = 0;
  uint64_t cancelled_ = 0;
  mutable std::mutex stats_mu_;
  LuaWorkerStats stats_;
  bool closed_ = false;
};

}  // namespace sluice
