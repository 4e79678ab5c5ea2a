#pragma once
// The seam between the Lua library and whoever runs requests. lua/ never includes libuv, llhttp
// or proxy headers: the proxy implements RequestHost (one per request) and WorkerHost (one per
// worker thread), and tests implement them with canned data.
//
// Coroutine (yield/resume) protocol
// ---------------------------------
// Yielding phases (rewrite, access, aggregate) run each policy handler on one Lua coroutine per
// request (LuaRequest, lua/request.h). Non-yielding phases run with a plain protected call.
//
//  1. The host calls LuaRequest::run(phase). It returns a RunResult:
//       kContinue  - every handler returned; go on with the next phase.
//       kResponded - a handler called sluice.resp.exit: RequestHost::respond() has already been
//                    called (exactly once); the host sends that response and skips the
//                    rest of the phase chain (log still runs).
//       kYielded   - a handler is waiting for a host operation (sub-request, sleep). Nothing
//                    else to do now: the host keeps the request alive and waits.
//       kError     - a policy failed (error, budget, memory, disabled-policy contract): send
//                    500 with the request id; RunResult::error has file:line and a traceback
//                    for the error log.
//  2. While kYielded, the binding has started host operations (startSubrequest, startTimer)
//     and handed each a completion (a SubrequestCompletion and a cookie, or a timer callback).
//     The host completes each exactly once, from its event loop, unless the operation was
//     cancelled first (then never: after cancelSubrequest() returns the host holds no pointer
//     to the completion). Completing synchronously from inside startSubrequest is allowed
//     (e.g. "no such pool").
//  3. When the last callback of the waiting operation arrives, the library calls
//     RequestHost::scheduleResume(). The host must then, from its event loop on a fresh stack
//     (never from inside the callback's own stack; the proxy uses the loop's check phase right
//     after the poll that delivered the callback), call LuaRequest::resume(), which returns a
//     RunResult with the same meaning as run()'s and may yield again.
//     If everything completed synchronously before the coroutine even yielded, run() resumes
//     at once by itself and scheduleResume() is not called.
//  4. The client went away (or the request is torn down): the host calls LuaRequest::cancel()
//     (the destructor does it too). Every outstanding operation is cancelled through
//     cancelSubrequest()/cancelTimer(), late callbacks are ignored, the coroutine is dropped.
//
// Every LuaRequest holds a shared_ptr to its WorkerVm, so a request finishes on the
// generation it started with even after a reload committed a new one.
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.h"
#include "core/log.h"

namespace sluice::lua {

// Where Lua code runs. The first block is the module lifecycle, the second the request phases
// in the order the proxy runs them.
enum class Phase : uint8_t {
  kInit,          // module top level (validator and worker): no I/O, no shared state
  kConfigure,     // policy.configure(conf) per attachment at prepare: may reject a config
  kInitWorker,    // policy.init_worker() once per worker VM at prepare: timers, shared dicts
  kTimer,         // a timer callback: no request, may not yield
  kDestroy,       // policy.destroy() when the generation retires
  kRewrite,       // before routing decisions: may yield, may end the request
  kAccess,        // after limit and risk: may yield, may end the request
  kAggregate,     // content of aggregation routes: may yield, must respond
  kBalancer,      // pick a peer of the route's pool: may not yield
  kHeaderFilter,  // response headers (upstream or local): may not yield
  kBodyFilter,    // each response body chunk: may not yield
  kLog,           // after the response is sent: may not yield
  kCount,
};

const char* phaseName(Phase p);
inline bool phaseMayYield(Phase p) {
  return p == Phase::kRewrite || p == Phase::kAccess || p == Phase::kAggregate;
}
inline bool isRequestPhase(Phase p) { return p >= Phase::kRewrite && p < Phase::kCount; }

using PhaseMask = uint32_t;
constexpr PhaseMask phaseBit(Phase p) { return PhaseMask{1} << static_cast<unsigned>(p); }

struct Header {
  std::string name;  // original case
  std::string value;
};
using HeaderList = std::vector<Header>;

// Identity computed once by the proxy's identify phase (sluice.var.*).
enum class RequestVar : uint8_t {
  kClientIp,
  kRoute,
  kRequestId,
  kMemberId,
  kDeviceId,
  kItemId,
  kFingerprint,
  kCount,
};

struct LimitTakeResult {
  bool found = true;  // false: no rule or key by that name on this route
  bool allowed = true;
  int64_t remaining = 0;
  double reset_seconds = 0;  // until a rejected take could succeed / the window resets
};

struct HeaderView {
  std::string_view name;  // original case
  std::string_view value;
};

// One sub-request as a policy asked for it. The views point into the policy's Lua strings and
// are valid only during the startSubrequest() call: a host copies what it keeps (the proxy
// writes the request head at once). Copying them into std::strings first cost ~10 allocations
// per http.multi of three.
struct SubrequestSpec {
  std::string_view pool;  // a named upstream pool; never an address
  std::string_view method = "GET";
  std::string_view path;  // origin-form, starting with '/'
  std::span<const HeaderView> headers;
  std::string_view body;
  Nanos timeout = 0;       // per call, already capped by the total deadline
  size_t max_body = 0;     // the host fails the call with "too large" past this
};

struct SubrequestResult {
  bool ok = false;
  int status = 0;
  HeaderList headers;
  std::string body;
  std::string error;  // when !ok: "timeout", "connect", "no such pool", "too large", ...
};

using OperationId = uint64_t;
using TimerCallback = std::function<void()>;

// Where a sub-request's result goes: the host calls onSubrequestDone(cookie, result) with the
// cookie startSubrequest() was given. An interface and a cookie rather than a std::function per
// sub-request, whose captured state cost a heap allocation each.
class SubrequestCompletion {
 public:
  virtual void onSubrequestDone(uint64_t cookie, SubrequestResult&& result) = 0;

 protected:
  ~SubrequestCompletion() = default;
};

// One request as the Lua API sees it. Views returned stay valid until the next call that
// mutates the same thing or the end of the request.
class RequestHost {
 public:
  virtual ~RequestHost() = default;

  virtual std::string_view method() const = 0;
  virtual std::string_view path() const = 0;   // without the query
  virtual std::string_view query() const = 0;  // raw, without '?'
  // Request headers in wire order, original case.
  virtual size_t headerCount() const = 0;
  virtual std::string_view headerName(size_t i) const = 0;
  virtual std::string_view headerValue(size_t i) const = 0;
  // The buffered request body; false when it was not (or could not be) buffered within limit.
  virtual bool body(std::string_view* out) const = 0;
  virtual std::string_view var(RequestVar v) const = 0;  // empty: unknown

  // Rewrite/access: changes the request forwarded upstream.
  virtual void setRequestHeader(std::string_view name, std::string_view value, bool remove) = 0;
  // Ends the request with a local response (called at most once per request). The views are
  // the policy's strings, valid during the call only.
  virtual void respond(int status, std::span<const HeaderView> headers, std::string_view body) = 0;
  // Before header_filter: queued for the response; in header_filter: the response itself.
  // Framing fields (Content-Length, Transfer-Encoding, Connection, ...) are the host's own: a
  // host ignores changes to them.
  virtual void setResponseHeader(std::string_view name, std::string_view value, bool remove) = 0;
  virtual int responseStatus() const = 0;  // 0 before there is one
  // resp.exit's status before the response exists; in header_filter the response's status.
  virtual void setResponseStatus(int status) = 0;
  // The response headers as they stand, in order, original case; only in header_filter (no
  // response head exists before it, and it has been sent after it): 0 elsewhere.
  virtual size_t responseHeaderCount() const = 0;
  virtual std::string_view responseHeaderName(size_t i) const = 0;
  virtual std::string_view responseHeaderValue(size_t i) const = 0;

  virtual LimitTakeResult limitTake(std::string_view rule_or_key, uint32_t cost) = 0;
  // Rewrite: the value of the `lua:NAME` key source the route's limit rules read. False when the
  // request already holds the most names it may (the host's bound).
  virtual bool setLimitKey(std::string_view name, std::string_view value) = 0;
  // sluice.risk.add: points for the request's risk score under the signal's name. Before the
  // risk phase (rewrite) they join its evaluation; after it they change this request's score and
  // raise the entities' decaying scores. False when the request already holds the most distinct
  // signals it may (the host's bound).
  virtual bool riskAdd(std::string_view signal, int points) = 0;
  // sluice.risk.score: the request's score (0..100) as the risk phase computed it plus later adds;
  // before the risk phase, or on a route without it, the clamped sum of the points added so far.
  virtual int riskScore() = 0;

  // `done` outlives the operation unless cancelSubrequest() is called first (step 4 above).
  virtual OperationId startSubrequest(const SubrequestSpec& spec, SubrequestCompletion& done,
                                      uint64_t cookie) = 0;
  virtual void cancelSubrequest(OperationId id) = 0;
  // Step 3 of the protocol above: call LuaRequest::resume() soon, from the event loop.
  virtual void scheduleResume() = 0;
};

// Per worker thread: clock, timers and the error log.
class WorkerHost {
 public:
  virtual ~WorkerHost() = default;
  virtual Nanos now() const = 0;  // monotonic
  // `fn` runs once on this worker's loop after `delay`, unless cancelled.
  virtual OperationId startTimer(Nanos delay, TimerCallback fn) = 0;
  virtual void cancelTimer(OperationId id) = 0;
  virtual void log(LogLevel level, std::string_view message) = 0;
};

}  // namespace sluice::lua
