#include "lua/request.h"

#include "core/strings.h"
#include "lua/vm_internal.h"

namespace sluice::lua {

namespace {
constexpr size_t kThreadPoolMax = 64;
constexpr size_t kCtxRefPoolMax = 1024;

// The tables are fresh (no metatable), so rawset with the VM's interned keys is what setfield
// did, without hashing "status", "headers" and "body" again for every part.
void pushResult(lua_State* L, const VmCore* c, const SubrequestResult& r, size_t max_body) {
  lua_createtable(L, 0, 3);
  pushKey(L, c, ApiKey::kStatus);
  lua_pushinteger(L, r.status);
  lua_rawset(L, -3);
  pushKey(L, c, ApiKey::kHeaders);
  lua_createtable(L, 0, static_cast<int>(r.headers.size()));
  // Each name is lowered on the stack and interned once (it was copied into a std::string and
  // interned twice, by getfield and setfield, per header of every part of an http.multi).
  // First value wins (sub-request headers are informational). A repeated name is found by
  // comparing with the earlier names in C++ (a handful of headers) rather than with a
  // pushvalue/rawget/type/pop round trip through the table for every header.
  char lower[128];
  std::string long_name;
  const size_t count = r.headers.size();
  for (size_t hi = 0; hi < count; hi++) {
    const Header& h = r.headers[hi];
    bool repeated = false;
    for (size_t j = 0; j < hi && !repeated; j++) repeated = equalsIgnoreCase(r.headers[j].name, h.name);
    if (repeated) continue;
    const size_t n = h.name.size();
    char* key = lower;
    if (n > sizeof lower) {
      long_name.resize(n);
      key = long_name.data();
    }
    for (size_t i = 0; i < n; i++) key[i] = asciiLower(h.name[i]);
    lua_pushlstring(L, key, n);
    lua_pushlstring(L, h.value.data(), h.value.size());
    lua_rawset(L, -3);
  }
  lua_rawset(L, -3);
  pushKey(L, c, ApiKey::kBody);
  lua_pushlstring(L, r.body.data(), std::min(r.body.size(), max_body));
  lua_rawset(L, -3);
}
}  // namespace

LuaRequest::LuaRequest(WorkerVmPtr vm, RequestHost& host, const RouteChain* chain)
    : vm_(std::move(vm)), core_(&vm_->core()), host_(host), chain_(chain),
      ctx_ref_(LUA_NOREF), co_ref_(LUA_NOREF) {}

LuaRequest::~LuaRequest() {
  cancel();
  if (co_) dropCoroutine(!started_);
  if (ctx_ref_ != LUA_NOREF) {
    // The table itself is garbage now (unless a timer of the policy kept it): only the
    // registry slot is reused, refilled with a fresh table by the next request.
    if (core_->free_ctx_refs.size() < kCtxRefPoolMax) {
      lua_pushboolean(core_->L, 0);
      lua_rawseti(core_->L, LUA_REGISTRYINDEX, ctx_ref_);
      core_->free_ctx_refs.push_back(ctx_ref_);
    } else {
      luaL_unref(core_->L, LUA_REGISTRYINDEX, ctx_ref_);
    }
  }
}

bool LuaRequest::hasPhase(Phase phase) const {
  return chain_ && !chain_->phases[static_cast<size_t>(phase)].empty();
}

int LuaRequest::ctxRef() {
  if (ctx_ref_ == LUA_NOREF) {
    lua_State* L = core_->L;
    lua_newtable(L);
    if (!core_->free_ctx_refs.empty()) {
      ctx_ref_ = core_->free_ctx_refs.back();
      core_->free_ctx_refs.pop_back();
      lua_rawseti(L, LUA_REGISTRYINDEX, ctx_ref_);
    } else {
      ctx_ref_ = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  return ctx_ref_;
}

void LuaRequest::beginWait(PendingOp::Kind kind, size_t slots) {
  PendingOp& op = op_;
  op.kind = kind;
  op.active = true;
  op.ready = false;
  op.has_timer = false;
  op.seq++;
  op.outstanding = slots;
  op.slots.clear();  // capacity kept for the next wait of this request
  op.slots.resize(slots);
}

void LuaRequest::startSubrequests(bool multi, std::span<const SubrequestSpec> specs) {
  // Cancels what a wait that never reached its yield left running (the bindings check that
  // they can yield before starting anything, so this is a safety net).
  if (op_.active) cancelOp();
  beginWait(multi ? PendingOp::Kind::kMulti : PendingOp::Kind::kRequest, specs.size());
  subrequests_ += specs.size();
  const uint32_t seq = op_.seq;
  for (size_t i = 0; i < specs.size(); i++) {
    op_.slots[i].started = true;
    OperationId id = host_.startSubrequest(specs[i], *this, (uint64_t{seq} << 32) | i);
    // Cancelled from inside a synchronous completion: the rest never starts.
    if (!op_.active || op_.seq != seq) break;
    op_.slots[i].id = id;
  }
}

void LuaRequest::onSubrequestDone(uint64_t cookie, SubrequestResult&& result) {
  PendingOp& op = op_;
  const size_t i = static_cast<uint32_t>(cookie);
  // After cancel(), or for an earlier wait: ignored.
  if (!op.active || (cookie >> 32) != op.seq || i >= op.slots.size()) return;
  PendingOp::Slot& slot = op.slots[i];
  if (slot.done) return;
  slot.done = true;
  slot.result = std::move(result);
  if (--op.outstanding == 0) {
    op.ready = true;
    opReady();
  }
}

void LuaRequest::startSleep(Nanos delay) {
  if (op_.active) cancelOp();
  beginWait(PendingOp::Kind::kSleep, 0);
  op_.outstanding = 1;
  op_.has_timer = true;
  const uint32_t seq = op_.seq;
  // cancel() cancels the timer while it is pending, so `this` outlives the callback.
  op_.timer = core_->worker->startTimer(delay, [this, seq] {
    if (!op_.active || op_.seq != seq || op_.ready) return;
    op_.outstanding = 0;
    op_.ready = true;
    opReady();
  });
}

void LuaRequest::cancelOp() {
  PendingOp& op = op_;
  if (!op.active) return;
  op.active = false;  // completions arriving from here on are no-ops
  for (const PendingOp::Slot& slot : op.slots)
    if (slot.started && !slot.done) host_.cancelSubrequest(slot.id);
  if (op.has_timer && !op.ready && core_->worker) core_->worker->cancelTimer(op.timer);
  op.has_timer = false;
  op.slots.clear();
}

void LuaRequest::opReady() {
  // Inside run()/resume() the driver notices `ready` after the yield; otherwise the host must
  // come back from a fresh event-loop turn.
  if (!in_run_) host_.scheduleResume();
}

void LuaRequest::dropCoroutine(bool reusable) {
  if (!co_) return;
  if (reusable && core_->free_threads.size() < kThreadPoolMax) {
    lua_settop(co_, 0);
    core_->free_threads.push_back(co_ref_);
  } else {
    luaL_unref(core_->L, LUA_REGISTRYINDEX, co_ref_);
  }
  co_ = nullptr;
  co_ref_ = LUA_NOREF;
}

void LuaRequest::cancel() {
  cancelOp();
  if (waiting_ || started_) {
    // A suspended coroutine cannot be reused: drop it.
    dropCoroutine(false);
    started_ = false;
  }
  waiting_ = false;
  if (core_->request == this) core_->request = nullptr;
}

int LuaRequest::pushResults() {
  PendingOp* op = &op_;
  op->active = false;
  struct Release {  // the results' strings go once they are in Lua
    PendingOp* op;
    ~Release() { op->slots.clear(); }
  } release{op};
  lua_State* L = co_;
  size_t max_body = core_->options.max_subrequest_body;
  auto tooLarge = [&](const SubrequestResult& r) { return r.ok && r.body.size() > max_body; };
  switch (op->kind) {
    case PendingOp::Kind::kSleep:
      return 0;
    case PendingOp::Kind::kRequest: {
      const SubrequestResult& r = op->slots[0].result;
      if (!r.ok || tooLarge(r)) {
        lua_pushnil(L);
        lua_pushstring(L, !r.ok ? (r.error.empty() ? "failed" : r.error.c_str()) : "too large");
        return 2;
      }
      pushResult(L, core_, r, max_body);
      return 1;
    }
    case PendingOp::Kind::kMulti: {
      lua_createtable(L, static_cast<int>(op->slots.size()), 0);
      for (size_t i = 0; i < op->slots.size(); i++) {
        const SubrequestResult& r = op->slots[i].result;
        if (!r.ok || tooLarge(r)) {
          lua_createtable(L, 0, 1);
          pushKey(L, core_, ApiKey::kErr);
          lua_pushstring(L, !r.ok ? (r.error.empty() ? "failed" : r.error.c_str()) : "too large");
          lua_rawset(L, -3);
        } else {
          pushResult(L, core_, r, max_body);
        }
        lua_rawseti(L, -2, static_cast<int>(i + 1));
      }
      return 1;
    }
  }
  return 0;
}

RunResult LuaRequest::fail(size_t policy, std::string message) {
  Policy& p = core_->policies[policy];
  p.errors++;
  RunResult r;
  r.status = RunStatus::kError;
  r.error_status = 500;
  r.error = "policy '" + p.name + "' failed in phase '" + phaseName(phase_) + "': " + message;
  return r;
}

RunResult LuaRequest::run(Phase phase) {
  if (phase == Phase::kBodyFilter) {
    std::string chunk;
    return runBodyFilter(&chunk, true);
  }
  if (phase == Phase::kBalancer) {
    std::string peer;
    return runBalancer(&peer);
  }
  RunResult r;
  if (!chain_ || cancelled_ || !isRequestPhase(phase)) return r;
  if (waiting_) {
    r.status = RunStatus::kError;
    r.error_status = 500;
    r.error = "lua: run() while the request is waiting for resume()";
    return r;
  }
  if (responded_ && phaseMayYield(phase)) return r;
  phase_ = phase;
  index_ = 0;
  started_ = false;
  if (!phaseMayYield(phase)) return runPlain(phase, 0, nullptr, false, nullptr);
  return drive(0);
}

RunResult LuaRequest::resume() {
  RunResult r;
  if (!waiting_ || !op_.active || !op_.ready) {
    if (!waiting_) return r;
    r.status = RunStatus::kYielded;  // spurious wake-up: still waiting
    return r;
  }
  waiting_ = false;
  int n = pushResults();
  return drive(n);
}

RunResult LuaRequest::drive(int nargs) {
  const auto& handlers = chain_->phases[static_cast<size_t>(phase_)];
  lua_State* L = core_->L;
  in_run_ = true;
  core_->request = this;
  core_->phase = phase_;
  RunResult result;
  while (index_ < handlers.size()) {
    const ChainEntry& e = handlers[index_];
    Policy& p = core_->policies[e.policy];
    if (!started_) {
      if (p.disabled) {
        index_++;
        continue;
      }
      if (!co_) {
        if (!core_->free_threads.empty()) {
          co_ref_ = core_->free_threads.back();
          core_->free_threads.pop_back();
          lua_rawgeti(L, LUA_REGISTRYINDEX, co_ref_);
          co_ = lua_tothread(L, -1);
          lua_pop(L, 1);
        } else {
          co_ = lua_newthread(L);
          co_ref_ = luaL_ref(L, LUA_REGISTRYINDEX);
        }
      }
      lua_rawgeti(co_, LUA_REGISTRYINDEX, e.handler_ref);
      lua_rawgeti(co_, LUA_REGISTRYINDEX, e.conf_ref);
      lua_rawgeti(co_, LUA_REGISTRYINDEX, ctxRef());
      nargs = 2;
      started_ = true;
      exited_ = false;
    }
    budgetStart(core_);
    int rc = lua_resume(co_, nargs);
    bool over = budgetStop(core_);
    nargs = 0;
    if (over) {
      // Caught by the hook (interpreted code) or only measured afterwards (compiled code).
      p.overruns++;
      std::string msg = "exceeded its time budget of " +
                        std::to_string(core_->options.budget / kMillis) + " ms";
      if (rc != 0 && rc != LUA_YIELD) msg += " (" + formatError(co_, -1) + ")";
      if (p.overruns >= core_->options.overruns_to_disable && !p.disabled) {
        p.disabled = true;
        msg += "; policy disabled after " + std::to_string(p.overruns) + " overruns";
        if (core_->worker)
          core_->worker->log(LogLevel::kError, "lua: policy '" + p.name + "' (" + p.file +
                                                   ") disabled after repeated budget overruns");
      }
      cancel();
      result = fail(e.policy, msg);
      break;
    }
    if (rc == LUA_YIELD) {
      if (exited_) {
        // resp.exit: the handler never continues; the rest of the phase is skipped.
        dropCoroutine(false);
        started_ = false;
        result.status = RunStatus::kResponded;
        break;
      }
      if (!op_.active) {
        cancel();
        result = fail(e.policy, "coroutine.yield() outside a sluice call in a handler");
        break;
      }
      if (op_.ready) {
        nargs = pushResults();
        continue;
      }
      waiting_ = true;
      result.status = RunStatus::kYielded;
      break;
    }
    if (rc == 0) {
      lua_settop(co_, 0);
      started_ = false;
      index_++;
      continue;
    }
    // A Lua error: message with file:line, plus the coroutine's traceback for the log.
    std::string msg = formatError(co_, -1);
    luaL_traceback(L, co_, msg.c_str(), 0);
    msg = formatError(L, -1);
    lua_pop(L, 1);
    dropCoroutine(false);
    started_ = false;
    result = fail(e.policy, msg);
    break;
  }
  in_run_ = false;
  if (!waiting_) core_->request = nullptr;
  if (result.status == RunStatus::kContinue && phase_ == Phase::kAggregate && !responded_) {
    result.status = RunStatus::kError;
    result.error_status = 500;
    result.error = "lua: the aggregate phase ended without a response (call sluice.resp.exit)";
  }
  if (result.status == RunStatus::kResponded || (result.status == RunStatus::kContinue && co_ && !started_)) {
    // Keep co_ for the next phase of this request; it is clean.
  }
  return result;
}

RunResult LuaRequest::runPlain(Phase phase, int extra, std::string* chunk, bool eof,
                               std::string* peer) {
  const auto& handlers = chain_->phases[static_cast<size_t>(phase)];
  lua_State* L = core_->L;
  RunResult result;
  LuaRequest* saved = core_->request;
  core_->request = this;
  core_->phase = phase;
  for (const ChainEntry& e : handlers) {
    Policy& p = core_->policies[e.policy];
    if (p.disabled) continue;
    lua_rawgeti(L, LUA_REGISTRYINDEX, core_->traceback_ref);
    int base = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, e.handler_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, e.conf_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctxRef());
    int nargs = 2;
    if (chunk) {
      lua_pushlstring(L, chunk->data(), chunk->size());
      lua_pushboolean(L, eof);
      nargs += 2;
    }
    budgetStart(core_);
    int rc = lua_pcall(L, nargs, 1, base);
    bool over = budgetStop(core_);
    if (rc != 0 || over) {
      std::string msg = rc != 0 ? formatError(L, -1) : "";
      // LuaJIT only says "attempt to yield across C-call boundary": name the rule instead.
      if (rc != 0 && msg.find("attempt to yield across") != std::string::npos)
        msg = std::string("phase '") + phaseName(phase) + "' may not yield (" + msg + ")";
      if (over) {
        p.overruns++;
        msg = "exceeded its time budget of " + std::to_string(core_->options.budget / kMillis) +
              " ms" + (msg.empty() ? "" : " (" + msg + ")");
        if (p.overruns >= core_->options.overruns_to_disable) p.disabled = true;
      }
      lua_settop(L, base - 1);
      phase_ = phase;
      result = fail(e.policy, msg);
      break;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t n;
      const char* s = lua_tolstring(L, -1, &n);
      if (chunk) chunk->assign(s, n);
      if (peer) {
        peer->assign(s, n);
        lua_settop(L, base - 1);
        break;
      }
    }
    lua_settop(L, base - 1);
  }
  core_->request = saved;
  return result;
}

RunResult LuaRequest::runBodyFilter(std::string* chunk, bool eof) {
  if (!chain_ || waiting_) return {};
  phase_ = Phase::kBodyFilter;
  return runPlain(Phase::kBodyFilter, 2, chunk, eof, nullptr);
}

RunResult LuaRequest::runBalancer(std::string* peer) {
  if (!chain_ || waiting_) return {};
  phase_ = Phase::kBalancer;
  return runPlain(Phase::kBalancer, 0, nullptr, false, peer);
}

}  // namespace sluice::lua
