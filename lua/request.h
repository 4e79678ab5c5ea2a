#pragma once
// LuaRequest: the Lua side of one request on one WorkerVm (the coroutine protocol is described
// in lua/host.h). Not thread-safe: used on its worker's thread only. Holds the WorkerVm alive.
#include <memory>
#include <span>
#include <string>
#include <vector>

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

struct RouteChain;

// The completion side is private: only the host, handed `*this` by startSubrequests(), calls it.
class LuaRequest final : private SubrequestCompletion {
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
  // Start what the binding then yields for: http.request (one spec; `multi` false: res or
  // nil, err), http.multi (a table of results), sleep.
  void startSubrequests(bool multi, std::span<const SubrequestSpec> specs);
  void startSleep(Nanos delay);
  // A wait started and not yet handed back to the coroutine.
  bool pending() const { return op_.active; }
  size_t subrequestsStarted() const { return subrequests_; }

 private:
  // What a yielding binding waits for. One per request, reused by each wait (it was a
  // shared_ptr per call, plus a std::function per sub-request holding it): completions find
  // it through the cookie, whose sequence number makes one for an earlier or cancelled wait
  // a no-op.
  struct PendingOp {
    enum class Kind : uint8_t { kRequest, kMulti, kSleep };
    struct Slot {
      OperationId id = 0;
      bool started = false;
      bool done = false;
      SubrequestResult result;
    };
    Kind kind = Kind::kRequest;
    bool active = false;
    bool ready = false;
    bool has_timer = false;
    uint32_t seq = 0;
    size_t outstanding = 0;
    OperationId timer = 0;
    std::vector<Slot> slots;  // one per sub-request, in call order
  };

  void onSubrequestDone(uint64_t cookie, SubrequestResult&& result) override;
  void beginWait(PendingOp::Kind kind, size_t slots);
  void cancelOp();  // cancels what the wait still has running, ignores its late completions
  void opReady();
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
  PendingOp op_;
};

}  // namespace sluice::lua
