// The yield/resume protocol between a LuaRequest and its host (lua/host.h).
#include <catch2/catch.hpp>

#include "tests/unit/lua/test_host.h"

namespace sluice::lua {
namespace {

using test::Fixture;
using test::policy;
using test::TestRequestHost;

const char* kMultiPolicy = R"(
  local rs = sluice.http.multi({
    { pool = "a", path = "/one", timeout = 200 },
    { pool = "b", path = "/two", method = "POST", body = "x", headers = { ["X-T"] = "1" } },
  }, { total_timeout = 100 })
  local parts = {}
  for i, r in ipairs(rs) do parts[i] = r.err or (r.status .. ":" .. r.body .. ":" .. tostring(r.headers["content-type"])) end
  sluice.resp.exit(200, table.concat(parts, "|"))
)";

TEST_CASE("http.multi completing synchronously resumes inside run()", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", kMultiPolicy)}}, {{"p", ""}});
  TestRequestHost host;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  host.canned["b/two"] = TestRequestHost::ok(201, "2");
  auto req = f.vm->newRequest(host, "r1");
  RunResult r = req->run(Phase::kAccess);
  INFO(r.error);
  REQUIRE(r.status == RunStatus::kResponded);
  CHECK(host.resumes_scheduled == 0);
  CHECK(host.resp_body == "200:1:application/json|201:2:application/json");
  REQUIRE(host.started.size() == 2);
  CHECK(host.started[0].timeout == 100 * kMillis);  // capped by total_timeout
  CHECK(host.started[1].method == "POST");
  CHECK(host.started[1].body == "x");
  CHECK(host.started[1].headers.size() == 1);
  CHECK(host.started[1].timeout == 100 * kMillis);
}

TEST_CASE("sub-request response headers: lower-cased names, the first of a repeated name wins", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", R"(
    local r = sluice.http.request("a", { path = "/one" })
    local names = {}
    for k in pairs(r.headers) do names[#names + 1] = k end
    table.sort(names)
    local out = {}
    for _, k in ipairs(names) do out[#out + 1] = k .. "=" .. r.headers[k] end
    sluice.resp.exit(200, table.concat(out, ","))
  )")}}, {{"p", ""}});
  TestRequestHost host;
  SubrequestResult res = TestRequestHost::ok(200, "1");
  res.headers = {{"Set-Cookie", "a=1"}, {"X-Served-By", "one"}, {"set-cookie", "b=2"},
                 {"SET-COOKIE", "c=3"}, {std::string(200, 'L'), "long"}, {"x-served-BY", "two"}};
  host.canned["a/one"] = res;
  auto req = f.vm->newRequest(host, "r1");
  RunResult r = req->run(Phase::kAccess);
  INFO(r.error);
  REQUIRE(r.status == RunStatus::kResponded);
  CHECK(host.resp_body == std::string(200, 'l') + "=long,set-cookie=a=1,x-served-by=one");
}

TEST_CASE("deferred completions: yield, scheduleResume, resume, results in order", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", kMultiPolicy)}}, {{"p", ""}});
  TestRequestHost host;
  host.mode = TestRequestHost::Mode::kDeferred;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  host.canned["b/two"] = TestRequestHost::err("timeout");
  auto req = f.vm->newRequest(host, "r1");
  RunResult r = req->run(Phase::kAccess);
  REQUIRE(r.status == RunStatus::kYielded);
  CHECK(req->waiting());
  CHECK(host.waiting.size() == 2);
  // The second finishes first; results still come back in call order.
  host.complete(2);
  CHECK(host.resumes_scheduled == 0);
  CHECK(req->resume().status == RunStatus::kYielded);  // spurious: still waiting
  host.complete(1);
  CHECK(host.resumes_scheduled == 1);
  r = req->resume();
  INFO(r.error);
  REQUIRE(r.status == RunStatus::kResponded);
  CHECK(host.resp_body == "200:1:application/json|timeout");
}

TEST_CASE("http.request returns res or nil, err; several yields in one handler", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", R"(
    local res, err = sluice.http.request("a", { path = "/one" })
    assert(res and res.status == 200 and res.body == "1")
    local res2, err2 = sluice.http.request("nope", { path = "/x" })
    assert(res2 == nil and err2 == "no such pool")
    ctx.done = true
  )")}},
          {{"p", ""}});
  TestRequestHost host;
  host.mode = TestRequestHost::Mode::kDeferred;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAccess).status == RunStatus::kYielded);
  host.completeAll();
  RunResult r = req->resume();  // second call fails synchronously ("no such pool" is deferred too)
  if (r.status == RunStatus::kYielded) {
    host.completeAll();
    r = req->resume();
  }
  INFO(r.error);
  CHECK(r.status == RunStatus::kContinue);
}

TEST_CASE("later policies run after a yielding one resumes", "[lua]") {
  Fixture f;
  f.build({{"a.lua", policy("access", "ctx.r = sluice.http.request('a', {path='/one'}).body", "a", 10)},
           {"b.lua", policy("access", "sluice.resp.exit(200, 'after ' .. ctx.r)", "b", 5)}},
          {{"a", ""}, {"b", ""}});
  TestRequestHost host;
  host.mode = TestRequestHost::Mode::kDeferred;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAccess).status == RunStatus::kYielded);
  host.completeAll();
  REQUIRE(req->resume().status == RunStatus::kResponded);
  CHECK(host.resp_body == "after 1");
}

TEST_CASE("client abort mid-fan-out cancels outstanding sub-requests; late callbacks are ignored", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("aggregate", kMultiPolicy)}}, {{"p", ""}});
  TestRequestHost host;
  host.mode = TestRequestHost::Mode::kDeferred;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  host.canned["b/two"] = TestRequestHost::ok(200, "2");
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAggregate).status == RunStatus::kYielded);
  // One part answers, then the client goes away.
  auto late = std::move(host.waiting[2]);
  host.waiting.erase(2);
  host.complete(1);
  req->cancel();
  CHECK(host.cancelled == std::vector<OperationId>{2});
  CHECK_FALSE(req->waiting());
  late.fire();  // a host bug: a completion after cancel -> ignored
  CHECK(host.resumes_scheduled == 0);
  CHECK(req->resume().status == RunStatus::kContinue);
  CHECK(host.responses == 0);
  req.reset();
  // The VM keeps serving.
  TestRequestHost h2;
  h2.canned["a/one"] = TestRequestHost::ok(200, "1");
  h2.canned["b/two"] = TestRequestHost::ok(200, "2");
  CHECK(f.vm->newRequest(h2, "r1")->run(Phase::kAggregate).status == RunStatus::kResponded);
}

TEST_CASE("destroying a waiting request cancels its sub-requests", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", kMultiPolicy)}}, {{"p", ""}});
  TestRequestHost host;
  host.mode = TestRequestHost::Mode::kDeferred;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  host.canned["b/two"] = TestRequestHost::ok(200, "2");
  {
    auto req = f.vm->newRequest(host, "r1");
    REQUIRE(req->run(Phase::kAccess).status == RunStatus::kYielded);
  }
  CHECK(host.cancelled.size() == 2);
}

TEST_CASE("a request finishes on its generation after a new VM is committed", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", "local r = sluice.http.request('a', {path='/one'})\nsluice.resp.exit(200, 'gen1')")}},
          {{"p", ""}});
  TestRequestHost host;
  host.mode = TestRequestHost::Mode::kDeferred;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAccess).status == RunStatus::kYielded);
  std::weak_ptr<WorkerVm> old = f.vm;
  f.vm->retire();
  f.build({{"p.lua", policy("access", "sluice.resp.exit(200, 'gen2')")}}, {{"p", ""}});
  CHECK_FALSE(old.expired());  // the waiting request holds it
  host.completeAll();
  REQUIRE(req->resume().status == RunStatus::kResponded);
  CHECK(host.resp_body == "gen1");
  req.reset();
  CHECK(old.expired());
}

TEST_CASE("fan-out, sub-request and argument caps", "[lua]") {
  Fixture f;
  VmOptions opts;
  opts.max_fanout = 2;
  opts.max_subrequests = 3;
  opts.max_subrequest_body = 4;
  f.build({{"p.lua", policy("access", R"(
    local three = { {pool="a", path="/1"}, {pool="a", path="/2"}, {pool="a", path="/3"} }
    local ok, err = pcall(sluice.http.multi, three)
    assert(not ok and err:find("fan%-out cap of 2"), err)
    ok, err = pcall(sluice.http.multi, { {pool="a", path="/1"}, {pool="a", path="no-slash"} })
    assert(not ok and err:find("must start with '/'"), err)
    ok, err = pcall(sluice.http.request, "a", { path = "/x y" })
    assert(not ok and err:find("space or control"), err)
    ok, err = pcall(sluice.http.request, "a", { path = "/", body = "12345" })
    assert(not ok and err:find("body too large"), err)
    ok, err = pcall(sluice.http.request, "a", { path = "/", timeout = -1 })
    assert(not ok and err:find("timeout"), err)
    assert(#sluice.http.multi({}) == 0)
    local big = sluice.http.request("a", { path = "/big" })
    assert(big == nil)
    local r = sluice.http.multi({ {pool="a", path="/big"}, {pool="a", path="/small"} })
    assert(r[1].err == "too large" and r[2].body == "ok")
    ok, err = pcall(sluice.http.request, "a", { path = "/small" })
    assert(not ok and err:find("too many sub%-requests"), err)
  )")}},
          {{"p", ""}}, opts);
  TestRequestHost host;
  host.canned["a/big"] = TestRequestHost::ok(200, "0123456789");
  host.canned["a/small"] = TestRequestHost::ok(200, "ok");
  RunResult r = f.vm->newRequest(host, "r1")->run(Phase::kAccess);
  INFO(r.error);
  CHECK(r.status == RunStatus::kContinue);
  CHECK(host.started.size() == 3);  // nothing started by the rejected calls
}

TEST_CASE("a NUL in a sub-request's header name or method is an error, nothing starts", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", R"(
    local ok, err = pcall(sluice.http.request, "a", { path = "/x", headers = { ["X-A\0B"] = "1" } })
    assert(not ok and err:find("invalid header name"), err)
    ok, err = pcall(sluice.http.multi, { { pool = "a", path = "/x" },
                                         { pool = "a", path = "/y", headers = { ["\0"] = "1" } } })
    assert(not ok and err:find("invalid header name"), err)
    ok, err = pcall(sluice.http.request, "a", { path = "/x", method = "GET\0X" })
    assert(not ok and err:find("invalid method"), err)
    ok, err = pcall(sluice.http.request, "a", { path = "/x", headers = { ["X-A"] = "1\0" } })
    assert(not ok and err:find("CR, LF or NUL"), err)
  )")}},
          {{"p", ""}});
  TestRequestHost host;
  RunResult r = f.vm->newRequest(host, "r1")->run(Phase::kAccess);
  INFO(r.error);
  CHECK(r.status == RunStatus::kContinue);
  CHECK(host.started.empty());
}

TEST_CASE("sub-request fields from metamethods survive the GC until the parts start", "[lua]") {
  // The spec handed to the host holds views of the policy's strings: every field read must stay
  // referenced until startSubrequest, even when a metamethod makes garbage and drops references.
  Fixture f;
  f.build({{"p.lua", policy("access", R"(
    local calls = {}
    local mt = { __index = function(t, k)
      for i = 1, 3000 do local _ = { i, tostring(i) } end  -- enough garbage for GC steps
      if k == "path" then return "/part" .. rawget(t, "n") end
      if k == "body" then
        calls[1].headers = nil  -- an earlier part's header table loses its only reference...
        return ("b"):rep(3)
      end
    end }
    for i = 1, 3 do
      calls[i] = setmetatable({ n = i, pool = "a", method = "P" .. "UT",
                                headers = { ["X-N"] = i, ["X-S"] = "s" .. i } }, mt)
    end
    local rs = sluice.http.multi(calls)
    for i = 1, 3 do assert(rs[i].status == 200, rs[i].err) end
    local ok, res = pcall(sluice.http.request, "a", { path = "/one" })  -- a yield inside pcall
    assert(ok and res.body == "1")
  )")}},
          {{"p", ""}});
  TestRequestHost host;
  host.mode = TestRequestHost::Mode::kDeferred;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  for (int i = 1; i <= 3; i++) host.canned["a/part" + std::to_string(i)] = TestRequestHost::ok(200, "");
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAccess).status == RunStatus::kYielded);
  REQUIRE(host.started.size() == 3);
  for (size_t i = 0; i < 3; i++) {
    const auto& s = host.started[i];
    CHECK(s.pool == "a");
    CHECK(s.method == "PUT");
    CHECK(s.path == "/part" + std::to_string(i + 1));
    CHECK(s.body == "bbb");
    REQUIRE(s.headers.size() == 2);
    for (const auto& h : s.headers)
      CHECK(h.value == (h.name == "X-N" ? "" : "s") + std::to_string(i + 1));
  }
  host.completeAll();
  REQUIRE(req->resume().status == RunStatus::kYielded);
  host.completeAll();
  RunResult r = req->resume();
  INFO(r.error);
  CHECK(r.status == RunStatus::kContinue);
}

TEST_CASE("http.request from a metamethod a binding runs is an error and starts nothing", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", R"(
    local spec = setmetatable({ pool = "a" }, { __index = function(t, k)
      if k == "path" then sluice.http.request("a", { path = "/inner" }) end
    end })
    local ok, err = pcall(sluice.http.multi, { spec })
    assert(not ok and err:find("cannot yield"), err)
    local res = sluice.http.request("a", { path = "/one" })
    sluice.resp.exit(200, res.body)
  )")}},
          {{"p", ""}});
  TestRequestHost host;
  host.canned["a/one"] = TestRequestHost::ok(200, "1");
  host.canned["a/inner"] = TestRequestHost::ok(200, "inner");
  RunResult r = f.vm->newRequest(host, "r1")->run(Phase::kAccess);
  INFO(r.error);
  CHECK(r.status == RunStatus::kResponded);
  CHECK(host.resp_body == "1");
  REQUIRE(host.started.size() == 1);
  CHECK(host.started[0].path == "/one");
}

TEST_CASE("sleep yields on a worker timer and is cancelled with the request", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", "sluice.sleep(0.5)\nsluice.resp.exit(204)")}}, {{"p", ""}});
  TestRequestHost host;
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAccess).status == RunStatus::kYielded);
  f.worker.advance(400 * kMillis);
  CHECK(host.resumes_scheduled == 0);
  f.worker.advance(100 * kMillis);
  CHECK(host.resumes_scheduled == 1);
  CHECK(req->resume().status == RunStatus::kResponded);
  CHECK(host.resp_status == 204);

  TestRequestHost h2;
  auto req2 = f.vm->newRequest(h2, "r1");
  REQUIRE(req2->run(Phase::kAccess).status == RunStatus::kYielded);
  req2->cancel();
  CHECK(f.worker.pending() == 0);
}

TEST_CASE("budget applies per resume, not to time spent waiting", "[lua]") {
  Fixture f;
  VmOptions opts;
  opts.budget = 20 * kMillis;
  f.build({{"p.lua", policy("access", "sluice.sleep(1)\nsluice.resp.exit(200)")}}, {{"p", ""}}, opts);
  TestRequestHost host;
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAccess).status == RunStatus::kYielded);
  struct timespec ts{0, 40 * 1000 * 1000};
  nanosleep(&ts, nullptr);  // real time passes while waiting
  f.worker.advance(kSeconds);
  CHECK(req->resume().status == RunStatus::kResponded);
}

}  // namespace
}  // namespace sluice::lua
