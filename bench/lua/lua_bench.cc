// Lua policy costs (issue 5 targets): an access policy that does nothing <= 1 us per request;
// validate + prepare of a bundle of 50 policies <= 100 ms.
//
//   build/bench/sluice-bench-lua
//
// The host is a minimal in-memory RequestHost, so the figures are the Lua library's own cost
// (coroutine, ctx table, budget clock reads), not the proxy's.
#include <benchmark/benchmark.h>

#include <memory>
#include <string>

#include "core/clock.h"
#include "lua/request.h"
#include "lua/validator.h"
#include "lua/vm.h"

namespace sluice::lua {
namespace {

class NullWorker : public WorkerHost {
 public:
  Nanos now() const override { return SteadyClock::monotonicNanos(); }
  OperationId startTimer(Nanos, TimerCallback) override { return 1; }
  void cancelTimer(OperationId) override {}
  void log(LogLevel, std::string_view) override {}
};

class NullRequest : public RequestHost {
 public:
  std::string_view method() const override { return "GET"; }
  std::string_view path() const override { return "/api/items/1"; }
  std::string_view query() const override { return ""; }
  size_t headerCount() const override { return 0; }
  std::string_view headerName(size_t) const override { return {}; }
  std::string_view headerValue(size_t) const override { return {}; }
  bool body(std::string_view*) const override { return false; }
  std::string_view var(RequestVar) const override { return "x"; }
  void setRequestHeader(std::string_view, std::string_view, bool) override {}
  void respond(int, std::span<const HeaderView>, std::string_view) override {}
  void setResponseHeader(std::string_view, std::string_view, bool) override {}
  int responseStatus() const override { return 200; }
  void setResponseStatus(int) override {}
  size_t responseHeaderCount() const override { return 0; }
  std::string_view responseHeaderName(size_t) const override { return {}; }
  std::string_view responseHeaderValue(size_t) const override { return {}; }
  LimitTakeResult limitTake(std::string_view, uint32_t) override { return {}; }
  bool setLimitKey(std::string_view, std::string_view) override { return true; }
  bool riskAdd(std::string_view, int) override { return true; }
  int riskScore() override { return 0; }
  OperationId startSubrequest(const SubrequestSpec&, SubrequestCompletion&, uint64_t) override {
    return 1;
  }
  void cancelSubrequest(OperationId) override {}
  void scheduleResume() override {}
};

NullWorker g_worker;

WorkerVmPtr oneVm(const std::string& body) {
  auto b = std::make_shared<PolicyBundle>();
  b->addFile("noop.lua", "return { name = 'noop', phases = { access = function(conf, ctx)\n" +
                             body + "\nend } }");
  b->attach("r", PolicyAttachment{"noop", "", ""});
  std::vector<std::string> errors;
  auto vm = WorkerVm::prepare(b, {}, &g_worker, nullptr, &errors);
  vm->commit();
  return vm;
}

// A whole request's Lua cost for one do-nothing access policy: LuaRequest creation, the
// access phase (coroutine resume, ctx table), destruction.
void BM_NoopAccessPolicy(benchmark::State& state) {
  auto vm = oneVm("");
  NullRequest host;
  for (auto _ : state) {
    auto req = vm->newRequest(host, "r");
    RunResult r = req->run(Phase::kAccess);
    benchmark::DoNotOptimize(r.status);
  }
}
BENCHMARK(BM_NoopAccessPolicy);

// The same with a policy that reads a header and a var and writes ctx.
void BM_SmallAccessPolicy(benchmark::State& state) {
  auto vm = oneVm("local ua = sluice.req.get_header('user-agent')\nctx.ip = sluice.var.client_ip");
  NullRequest host;
  for (auto _ : state) {
    auto req = vm->newRequest(host, "r");
    RunResult r = req->run(Phase::kAccess);
    benchmark::DoNotOptimize(r.status);
  }
}
BENCHMARK(BM_SmallAccessPolicy);

PolicyBundlePtr fiftyPolicies() {
  auto b = std::make_shared<PolicyBundle>();
  for (int i = 0; i < 50; i++) {
    std::string n = "p" + std::to_string(i);
    b->addFile(n + ".lua", "local json = sluice.json\nreturn { name = '" + n +
                               "', version = '1', priority = " + std::to_string(i) +
                               ",\n schema = { limit = { type = 'integer', default = 10, min = 1 },"
                               " mode = { type = 'string', enum = { 'a', 'b' }, default = 'a' } },\n"
                               " phases = {\n access = function(conf, ctx)\n"
                               "  if sluice.req.get_header('x-" + n + "') then ctx.hit = true end\n"
                               "  local ok = sluice.limit.take('" + n + "', 1)\n end,\n"
                               " log = function(conf, ctx) end } }\n");
    b->attach("route" + std::to_string(i % 10), PolicyAttachment{n, "{\"limit\": 5}", ""});
  }
  return b;
}

void BM_ValidatePlusPrepare50(benchmark::State& state) {
  auto b = fiftyPolicies();
  for (auto _ : state) {
    auto report = Validator().validate(b);
    if (!report.ok) state.SkipWithError(report.summary().c_str());
    std::vector<std::string> errors;
    auto vm = WorkerVm::prepare(b, {}, &g_worker, nullptr, &errors);
    vm->commit();
    benchmark::DoNotOptimize(vm.get());
  }
}
BENCHMARK(BM_ValidatePlusPrepare50)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace sluice::lua

BENCHMARK_MAIN();
