#pragma once
// LuaRequest: the Lua side of one request on one WorkerVm (the coroutine protocol is described
// in lua/host.h). Not thread-safe: used on its worker's thread only. Holds the WorkerVm alive.
#include <memory>
#include <string>

#include "lua/host.h"
#include "lua/vm.h"

struct lua_State;

namespace sluice::lua {

enum class RunStatus : uint8_t { kContinue, kResponded, kYielded, kError };

struct RunResult {
  RunStatus status = RunStatus::kContinue;
  // kError: status to send (500), and "policy 'x' (file:line): message\nstack traceback..."
  int error_status = 0;
  std::string error;
};

struct PendingOp;
struct RouteChain;

class LuaRequest {
 public:
  LuaRequest(WorkerVmPtr vm, RequestHost& host, const RouteChain* chain);
  ~LuaRequest();
  LuaRequest(const LuaRequest&) = delete;
  LuaRequest& operator=(const LuaRequest&) = delete;

  bool hasPhase(Phase phase) const;
  // rewrite, access, aggregate, header_filter, log.
  RunResult run(Phase phase);
  // body_filter: handlers get (conf, ctx, chunk, eof); a string returned replaces the chunk.
  RunResult runBodyFilter(std::string* chunk, bool eof);
  // balancer: the first handler returning a string picks the peer (left as is otherwise).
  RunResult runBalancer(std::string* peer);
  // After RequestHost::scheduleResume().
  RunResult resume();
  // The client went away: cancel every outstanding operation and drop the coroutine.
  void cancel();

  bool waiting() const { return waiting_; }
  bool responded() const { return responded_; }

  // Used by the bindings (lua/api.cc).
  RequestHost& host() { return host_; }
  lua_State* coroutine() const { return co_; }
  int ctxRef();
  void markResponded() { responded_ = true; exited_ = true; }
  // Starts waiting on `op` (the binding then yields).
  void wait(std::shared_ptr<PendingOp> op) { pending_ = std::move(op); }
  void opReady();
  size_t subrequestsStarted() const { return subrequests_; }
  void countSubrequests(size_t n) { subrequests_ += n; }

 private:
  RunResult drive(int nargs);
  RunResult runPlain(Phase phase, int extra_args, std::string* chunk, bool eof, std::string* peer);
  RunResult fail(size_t policy, std::string message);
  int pushResults();  // pushes the pending op's results onto co_
  void dropCoroutine(bool reusable);

  WorkerVmPtr vm_;
  VmCore* core_;
  RequestHost& host_;
  const RouteChain* chain_;
  int ctx_ref_;
  lua_State* co_ = nullptr;
  int co_ref_;
  Phase phase_ = Phase::kRewrite;
  size_t index_ = 0;        // handler of the current phase being run
  bool started_ = false;    // that handler is on co_ (maybe suspended)
  bool waiting_ = false;
  bool in_run_ = false;
  bool responded_ = false;
  bool exited_ = false;
  bool cancelled_ = false;
  size_t subrequests_ = 0;
  std::shared_ptr<PendingOp> pending_;
};

}  // namespace sluice::lua
