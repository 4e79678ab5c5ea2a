// The Lua API's argument checking: the input picks a sluice.* call and builds its arguments
// (nil, booleans, odd numbers, fuzzer strings, nested tables, json.null) and runs it in a
// request phase, also chosen by the input. Whatever the arguments, the call either works or
// raises a Lua error that becomes a 500 result; the VM must never crash or leak its state
// into the next input.
#include <memory>
#include <string>

#include "core/clock.h"
#include "lua/request.h"
#include "lua/vm.h"
#include "tests/fuzz/fuzz_common.h"

namespace sluice::lua {
namespace {

class FuzzWorker : public WorkerHost {
 public:
  Nanos now() const override { return 0; }
  OperationId startTimer(Nanos, TimerCallback) override { return ++id_; }
  void cancelTimer(OperationId) override {}
  void log(LogLevel, std::string_view) override {}
  OperationId id_ = 0;
};

class FuzzRequest : public RequestHost {
 public:
  std::string_view method() const override { return "GET"; }
  std::string_view path() const override { return "/p"; }
  std::string_view query() const override { return query_; }
  size_t headerCount() const override { return 1; }
  std::string_view headerName(size_t) const override { return "Host"; }
  std::string_view headerValue(size_t) const override { return "x"; }
  bool body(std::string_view* out) const override {
    *out = payload_;
    return true;
  }
  std::string_view var(RequestVar v) const override {
    return v == RequestVar::kMemberId ? std::string_view(payload_) : std::string_view("v");
  }
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
  OperationId startSubrequest(const SubrequestSpec& spec, SubrequestCompletion& done,
                              uint64_t cookie) override {
    FUZZ_CHECK(!spec.pool.empty() && spec.path[0] == '/');
    SubrequestResult r;
    r.ok = true;
    r.status = 200;
    r.body = payload_;
    done.onSubrequestDone(cookie, std::move(r));
    return 1;
  }
  void cancelSubrequest(OperationId) override {}
  void scheduleResume() override {}
  std::string query_;
  std::string payload_;
};

const char* kCalls[] = {
    "sluice.req.get_header(a, b)", "sluice.req.get_uri_args(a)", "sluice.req.set_header(a, b)",
    "sluice.resp.exit(a, b, c)", "sluice.resp.set_header(a, b)", "sluice.limit.take(a, b)",
    "sluice.risk.add(a, b)", "sluice.http.request(a, b)", "sluice.http.multi(a, b)",
    "sluice.json.encode(a)", "sluice.json.decode(a)", "sluice.json.array(a)",
    "sluice.timer.at(a, b)", "sluice.sleep(a)", "sluice.log(a, b, c)",
    "sluice.shared.d:set(a, b, c)", "sluice.shared.d:incr(a, b, c)", "sluice.shared.d:get(a)",
    "sluice.resp.set_status(a)", "sluice.var[a]",
};
constexpr size_t kNumCalls = sizeof(kCalls) / sizeof(kCalls[0]);

const char* kValues[] = {
    "nil", "true", "0", "-1", "1e308", "0/0", "200", "99", "600", "1.5", "s", "s:rep(3)",
    "{}", "{s}", "{path = s, pool = s}", "{{pool = 'a', path = '/' .. s}}", "sluice.json.null",
    "{path = '/x', timeout = 0}", "{path = '/x', headers = {[s] = s}}", "function() end",
};
constexpr size_t kNumValues = sizeof(kValues) / sizeof(kValues[0]);

struct State {
  FuzzWorker worker;
  ManualClock clock;
  SharedDictsPtr dicts = std::make_shared<SharedDicts>(clock);
  WorkerVmPtr vm;
  State() {
    dicts->getOrCreate("d", 1 << 16);
    // The handler runs the chunk the input built (carried in the query) on the payload.
    std::string src = "return { name = 'f', phases = {";
    for (const char* ph : {"access", "log", "header_filter"}) {
      src += std::string(ph) + " = function(conf, ctx)\n"
             "  local fn = assert(loadstring(sluice.req.get_query()))\n"
             "  return fn(sluice.var.member_id or '')\nend,";
    }
    src += "} }";
    auto b = std::make_shared<PolicyBundle>();
    b->addFile("f.lua", src);
    b->attach("r", PolicyAttachment{"f", "", ""});
    std::vector<std::string> errors;
    VmOptions opts;
    opts.budget = 200 * kMillis;
    vm = WorkerVm::prepare(b, opts, &worker, dicts, &errors);
    FUZZ_CHECK(vm != nullptr);
    vm->commit();
  }
};

}  // namespace
}  // namespace sluice::lua

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::lua;
  static State* state = new State();
  sluice::fuzz::Knobs k(data, size);
  size_t call = k.byte() % kNumCalls;
  const char* a = kValues[k.byte() % kNumValues];
  const char* b = kValues[k.byte() % kNumValues];
  const char* c = kValues[k.byte() % kNumValues];
  uint8_t phase_pick = k.byte() % 3;
  FuzzRequest host;
  host.payload_ = std::string(k.rest());
  host.query_ = std::string("local s = ...\nlocal a, b, c = ") + a + ", " + b + ", " + c +
                "\nreturn " + kCalls[call];
  const Phase phases[] = {Phase::kAccess, Phase::kLog, Phase::kHeaderFilter};
  auto req = state->vm->newRequest(host, "r");
  RunResult r = req->run(phases[phase_pick]);
  FUZZ_CHECK(r.status != RunStatus::kError || r.error_status == 500);
  FUZZ_CHECK(r.status != RunStatus::kYielded || phases[phase_pick] == Phase::kAccess);
  req.reset();
  FUZZ_CHECK(state->vm->memoryBytes() < (size_t{64} << 20));
  return 0;
}
