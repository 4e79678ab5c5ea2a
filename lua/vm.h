#pragma once
// WorkerVm: one LuaJIT state per worker and generation, built from a validated PolicyBundle.
//
// Two-phase commit: WorkerVm::prepare() does everything that can fail (compile, run module top
// levels, check shapes and schemas, configure, init_worker) and returns nullptr with
// `file:line: message` errors on any failure; commit() only arms the timers init_worker asked
// for, so a host can prepare on every worker, and commit everywhere or nowhere.
// The Validator (lua/validator.h) runs the same prepare() in a scratch VM without a worker.
//
// Each generation gets a fresh VM: the previous VM is still running its in-flight requests, so
// sharing Lua state across generations would let module-level state leak between them. A
// prepare of 50 policies costs a few milliseconds (bench/lua), so reuse by content hash buys
// little; PolicyBundle keeps the hashes so a bundle equal to the running one is a no-op.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "lua/host.h"
#include "lua/json.h"
#include "lua/policy_bundle.h"
#include "lua/shared_dict.h"

namespace sluice::lua {

struct VmOptions {
  size_t memory_limit = 64 << 20;      // bytes the VM may allocate; past it allocations fail
  Nanos budget = 50 * kMillis;         // wall time per run/resume of one policy handler
  uint32_t hook_instructions = 10000;  // the count hook checks the budget this often
  int overruns_to_disable = 3;         // budget overruns before a policy is disabled
  // Off by default: compiled traces never call the count hook, so with the JIT on a loop that
  // gets compiled is only caught after it returns (measured per resume) and an endless one is
  // not stopped at all. Policies mostly call C bindings, which the JIT does not speed up.
  bool jit = false;
  size_t max_fanout = 16;                  // sub-requests per http.multi
  size_t max_subrequests = 64;             // per request, all calls together
  size_t max_subrequest_body = 1 << 20;    // response body bytes per sub-request
  Nanos default_subrequest_timeout = 1000 * kMillis;
  size_t max_timers = 1024;                // pending timers per VM
  // Freed small blocks (<= 256 bytes) the VM keeps for reuse instead of handing them back to
  // malloc, in bytes, outside memory_limit (lua/vm_internal.h, SmallBlocks). 128 KB held a
  // GC cycle's worth of item_page garbage; 0 turns the lists off.
  size_t small_block_cache = 256 << 10;
  JsonLimits json;
};

struct PolicyInfo {
  std::string name;
  std::string version;
  std::string file;
  int priority = 0;
  int overruns = 0;
  uint64_t errors = 0;
  bool disabled = false;
};

class LuaRequest;
struct RouteChain;
using LuaRequestPtr = std::unique_ptr<LuaRequest>;
struct VmCore;
class WorkerVm;
using WorkerVmPtr = std::shared_ptr<WorkerVm>;

class WorkerVm : public std::enable_shared_from_this<WorkerVm> {
 public:
  enum class Mode { kValidate, kWorker };

  // `worker` may be null in kValidate mode. Errors are appended to *errors.
  static WorkerVmPtr prepare(PolicyBundlePtr bundle, const VmOptions& options, WorkerHost* worker,
                             SharedDictsPtr dicts, std::vector<std::string>* errors,
                             Mode mode = Mode::kWorker);
  ~WorkerVm();
  WorkerVm(const WorkerVm&) = delete;
  WorkerVm& operator=(const WorkerVm&) = delete;

  // Arms the timers init_worker created. Cannot fail.
  void commit();
  // The generation is being replaced: pending timers are cancelled and their callbacks run
  // once with premature = true, then each policy's destroy() runs. Requests in flight go on.
  void retire();

  // A request on `route`. Its phases run the route's policies (none for an unknown route).
  LuaRequestPtr newRequest(RequestHost& host, std::string_view route);
  // The same with the route's chain looked up once per generation by the host (routeChain),
  // so a request pays no lookup by name. The chain lives as long as this VM.
  const RouteChain* routeChain(std::string_view route) const;
  LuaRequestPtr newRequest(RequestHost& host, const RouteChain* chain);
  bool routeHasPhase(std::string_view route, Phase phase) const;

  size_t memoryBytes() const;
  std::vector<PolicyInfo> policies() const;
  const PolicyBundlePtr& bundle() const { return bundle_; }
  size_t pendingTimers() const;

  VmCore& core() { return *core_; }

 private:
  WorkerVm() = default;
  bool build(std::vector<std::string>* errors);

  PolicyBundlePtr bundle_;
  std::unique_ptr<VmCore> core_;
  bool committed_ = false;
  bool retired_ = false;
};

}  // namespace sluice::lua
