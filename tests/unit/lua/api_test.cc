// Every sluice.* call in the phases it is allowed in, and the phase rules for each.
#include <catch2/catch.hpp>

#include "tests/unit/lua/test_host.h"

namespace sluice::lua {
namespace {

using test::Fixture;
using test::policy;
using test::TestRequestHost;

struct Run {
  Fixture f;
  TestRequestHost host;
  LuaRequestPtr req;
  RunResult result;

  Run(const std::string& phase, const std::string& body, VmOptions opts = {}) {
    f.build({{"p.lua", policy(phase, body)}}, {{"p", ""}}, opts);
    REQUIRE(f.errors.empty());
    req = f.vm->newRequest(host, "r1");
  }
  RunResult go(Phase phase) {
    result = req->run(phase);
    return result;
  }
};

// For tests that check results over thousands of iterations, not the time budget: 3000 encodes
// take ~30 ms in the interpreter, and the default 50 ms budget failed this test on a loaded CI
// machine (run aborted as over budget).
VmOptions slowRunOptions() {
  VmOptions o;
  o.budget = 10 * kSeconds;
  return o;
}

Phase phaseByName(const std::string& n) {
  for (int i = 0; i < static_cast<int>(Phase::kCount); i++)
    if (n == phaseName(static_cast<Phase>(i))) return static_cast<Phase>(i);
  FAIL("no phase " << n);
  return Phase::kCount;
}

TEST_CASE("req getters return the request as the host sees it", "[lua]") {
  Run r("access", R"(
    assert(sluice.req.get_method() == "POST")
    assert(sluice.req.get_path() == "/api/items/42")
    assert(sluice.req.get_query() == "a=1&b=x%20y&a=2&flag")
    local args = sluice.req.get_uri_args()
    assert(args.a[1] == "1" and args.a[2] == "2", "repeated args become a list")
    assert(args.b == "x y" and args.flag == true)
    local h = sluice.req.get_headers()
    assert(h["user-agent"] == "ua/1")
    assert(h["x-multi"][1] == "one" and h["x-multi"][2] == "two")
    assert(sluice.req.get_header("USER-AGENT") == "ua/1")
    assert(sluice.req.get_header("missing") == nil)
    local list = sluice.req.get_header_list()
    assert(list[1][1] == "User-Agent" and list[3][2] == "two", "wire order, original case")
    assert(sluice.req.get_body() == "payload")
    assert(sluice.req.read_body() == "payload")
  )");
  r.host.method_ = "POST";
  r.host.path_ = "/api/items/42";
  r.host.query_ = "a=1&b=x%20y&a=2&flag";
  r.host.headers = {{"User-Agent", "ua/1"}, {"X-Multi", "one"}, {"x-multi", "two"}};
  r.host.body_ = "payload";
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
}

TEST_CASE("req.get_body without a buffered body returns nil and a reason", "[lua]") {
  Run r("access", "local b, err = sluice.req.get_body(); assert(b == nil and err:find('not buffered'))");
  CHECK(r.go(Phase::kAccess).status == RunStatus::kContinue);
}

TEST_CASE("req.set_header and resp.set_header reach the host, bad headers are errors", "[lua]") {
  Run r("access", R"(
    sluice.req.set_header("X-Member", "m1")
    sluice.req.set_header("X-Drop", nil)
    sluice.resp.set_header("X-Policy", "yes")
    local ok, err = pcall(sluice.req.set_header, "Bad Name", "v")
    assert(not ok and err:find("invalid header name"))
    ok, err = pcall(sluice.req.set_header, "X-A\0B", "v")
    assert(not ok and err:find("invalid header name"), "NUL in a name")
    ok, err = pcall(sluice.resp.set_header, "\0", "v")
    assert(not ok and err:find("invalid header name"), "NUL as a name")
    ok, err = pcall(sluice.resp.set_header, "X", "a\r\nInjected: 1")
    assert(not ok and err:find("CR, LF"))
  )");
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  REQUIRE(res.status == RunStatus::kContinue);
  CHECK(r.host.request_header_ops == std::vector<std::string>{"X-Member=m1", "X-Drop"});
  CHECK(r.host.response_header_ops == std::vector<std::string>{"X-Policy=yes"});
}

TEST_CASE("resp.exit headers: numbers become strings, bad names and values are errors", "[lua]") {
  Run r("access", R"(
    local ok, err = pcall(sluice.resp.exit, 200, "x", { ["X-\0"] = "v" })
    assert(not ok and err:find("invalid header name"), err)
    ok, err = pcall(sluice.resp.exit, 200, "x", { ["X-V"] = "a\nb" })
    assert(not ok and err:find("CR, LF"), err)
    sluice.resp.exit(200, "x", { ["X-N"] = 2.5, ["X-I"] = 7 })
  )");
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  REQUIRE(res.status == RunStatus::kResponded);
  CHECK(r.host.responses == 1);
  REQUIRE(r.host.resp_headers.size() == 2);
  for (const auto& h : r.host.resp_headers) CHECK(h.value == (h.name == "X-N" ? "2.5" : "7"));
}

TEST_CASE("resp.exit ends the request and skips the rest of the handler", "[lua]") {
  Run r("access", R"(
    ctx.before = true
    sluice.resp.exit(403, "denied", { ["Content-Type"] = "text/plain" })
    error("not reached")
  )");
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  REQUIRE(res.status == RunStatus::kResponded);
  CHECK(r.host.responses == 1);
  CHECK(r.host.resp_status == 403);
  CHECK(r.host.resp_body == "denied");
  REQUIRE(r.host.resp_headers.size() == 1);
  CHECK(r.host.resp_headers[0].name == "Content-Type");
}

TEST_CASE("resp.exit rejects a bad status", "[lua]") {
  Run r("access", "sluice.resp.exit(99)");
  RunResult res = r.go(Phase::kAccess);
  CHECK(res.status == RunStatus::kError);
  CHECK(res.error.find("invalid HTTP status") != std::string::npos);
  CHECK(r.host.responses == 0);
}

TEST_CASE("resp status in header_filter and log", "[lua]") {
  Fixture f;
  f.build({{"p.lua", R"(return { name = "p", phases = {
      header_filter = function(conf, ctx)
        ctx.seen = sluice.resp.get_status()
        sluice.resp.set_status(299)
        sluice.resp.set_header("X-Seen", tostring(ctx.seen))
      end,
      log = function(conf, ctx) assert(sluice.resp.get_status() == 299 and ctx.seen == 200) end } })"}},
          {{"p", ""}});
  REQUIRE(f.errors.empty());
  TestRequestHost host;
  host.resp_status = 200;
  auto req = f.vm->newRequest(host, "r1");
  RunResult res = req->run(Phase::kHeaderFilter);
  INFO(res.error);
  REQUIRE(res.status == RunStatus::kContinue);
  CHECK(host.resp_status == 299);
  CHECK(host.response_header_ops == std::vector<std::string>{"X-Seen=200"});
  res = req->run(Phase::kLog);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
}

TEST_CASE("ctx is one table per request, shared by policies and phases", "[lua]") {
  Fixture f;
  f.build({{"a.lua", R"(return { name = "a", priority = 2, phases = {
              access = function(conf, ctx) ctx.n = 1; assert(sluice.ctx == ctx) end } })"},
           {"b.lua", R"(return { name = "b", priority = 1, phases = {
              access = function(conf, ctx) ctx.n = ctx.n + 1 end,
              log = function(conf, ctx) assert(ctx.n == 2, "ctx.n = " .. tostring(ctx.n)) end } })"}},
          {{"a", ""}, {"b", ""}});
  REQUIRE(f.errors.empty());
  TestRequestHost host;
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAccess).status == RunStatus::kContinue);
  RunResult res = req->run(Phase::kLog);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
  // A second request starts with an empty ctx.
  auto req2 = f.vm->newRequest(host, "r1");
  CHECK(req2->run(Phase::kLog).status == RunStatus::kError);
}

TEST_CASE("a finished request's ctx slot is reused, never its table", "[lua]") {
  // The registry slot of a finished request's ctx is handed to the next request with a new
  // table: a policy that kept the old table (here in a global, as a timer closure could) writes
  // into that one only.
  Fixture f;
  f.build({{"a.lua", R"(return { name = "a", phases = {
              access = function(conf, ctx)
                assert(next(ctx) == nil, "ctx not empty: " .. tostring(next(ctx)))
                if kept then kept.leak = true end
                ctx.mine = true
                kept = ctx
              end,
              log = function(conf, ctx) assert(ctx.mine and not ctx.leak) end } })"}},
          {{"a", ""}});
  REQUIRE(f.errors.empty());
  TestRequestHost host;
  for (int i = 0; i < 5; ++i) {
    auto req = f.vm->newRequest(host, "r1");
    RunResult res = req->run(Phase::kAccess);
    INFO(i << ": " << res.error);
    REQUIRE(res.status == RunStatus::kContinue);
    res = req->run(Phase::kLog);
    INFO(i << ": " << res.error);
    REQUIRE(res.status == RunStatus::kContinue);
  }
}

TEST_CASE("var exposes identity and rejects unknown names", "[lua]") {
  Run r("access", R"(
    assert(sluice.var.client_ip == "192.0.2.7")
    assert(sluice.var.request_id == "req-1")
    assert(sluice.var.route == "r1")
    assert(sluice.var.member_id == "m-9")
    assert(sluice.var.device_id == nil)
    assert(sluice.var.item_id == "42" and sluice.var.fingerprint == "fp")
    local ok, err = pcall(function() return sluice.var.password end)
    assert(not ok and err:find("no such variable"))
    ok, err = pcall(function() sluice.var.client_ip = "1.1.1.1" end)
    assert(not ok and err:find("read%-only"))
  )");
  r.host.vars[RequestVar::kMemberId] = "m-9";
  r.host.vars[RequestVar::kItemId] = "42";
  r.host.vars[RequestVar::kFingerprint] = "fp";
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
}

TEST_CASE("limit.take returns allowed, remaining, reset; unknown rule gives nil, err", "[lua]") {
  Run r("access", R"(
    local ok, remaining, reset = sluice.limit.take("per_member", 2)
    assert(ok == false and remaining == 0 and reset == 1.5)
    local a, err = sluice.limit.take("nope")
    assert(a == nil and err:find("no limit rule 'nope'"))
    assert(not pcall(sluice.limit.take, "per_member", -1))
  )");
  r.host.limits["per_member"] = LimitTakeResult{true, false, 0, 1.5};
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
  CHECK(r.host.takes == std::vector<std::string>{"per_member:2", "nope:1"});
}

TEST_CASE("limit.set_key sets the lua:NAME keys in rewrite; bad names, values and counts are errors", "[lua]") {
  Run r("rewrite", R"(
    sluice.limit.set_key("buyer", "b-1")
    sluice.limit.set_key("buyer", "b-2")  -- a second call replaces the value
    sluice.limit.set_key("cluster", "c")
    assert(not pcall(sluice.limit.set_key, "", "x"))
    assert(not pcall(sluice.limit.set_key, string.rep("n", 65), "x"))
    assert(not pcall(sluice.limit.set_key, "big", string.rep("v", 4097)))
    assert(not pcall(sluice.limit.set_key, "only_name"))
    sluice.limit.set_key("third", "3")
    local ok, err = pcall(sluice.limit.set_key, "fourth", "4")  -- the test host holds three
    assert(not ok and err:find("too many keys"))
  )");
  RunResult res = r.go(Phase::kRewrite);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
  CHECK(r.host.limit_keys == std::map<std::string, std::string>{{"buyer", "b-2"}, {"cluster", "c"}, {"third", "3"}});
}

TEST_CASE("risk.add and risk.score", "[lua]") {
  Run r("access", R"(
    sluice.risk.add("headless_ua", 30)
    sluice.risk.add("headless_ua", 5)
    assert(sluice.risk.score() == 35)
    assert(not pcall(sluice.risk.add, "x", 1.5))
    assert(not pcall(sluice.risk.add, "x", 5000))
    -- names are plain tokens: they reach access logs and explain records
    local ok, err = pcall(sluice.risk.add, "bad name", 1)
    assert(not ok and err:find("invalid risk signal name", 1, true), err)
    assert(not pcall(sluice.risk.add, "", 1))
    assert(not pcall(sluice.risk.add, string.rep("a", 65), 1))
    assert(not pcall(sluice.risk.add, 'q"x', 1))
    sluice.risk.add("a.b-c_9", 1)
    -- the host bounds distinct signals per request (this one: 4)
    sluice.risk.add("two", 1)
    sluice.risk.add("three", 1)
    ok, err = pcall(sluice.risk.add, "five", 1)
    assert(not ok and err:find("too many risk signals", 1, true), err)
    sluice.risk.add("two", 1)  -- an existing name still adds up
  )");
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
  CHECK(r.host.risk["headless_ua"] == 35);
  CHECK(r.host.risk["two"] == 2);
  CHECK(r.host.risk.count("five") == 0);
}

// The encoder skips words of eight bytes that need no escape: random strings, weighted towards
// the bytes that do (and their neighbours), must encode exactly as a byte-by-byte encoder would.
TEST_CASE("json encode escapes exactly as the byte-by-byte definition", "[lua]") {
  Run r("access", R"(
    local json = sluice.json
    local special = {0, 1, 9, 10, 13, 31, 32, 33, 34, 35, 91, 92, 93, 126, 127, 128, 195, 169, 255}
    local function ref(s)
      local out = {'"'}
      for i = 1, #s do
        local b = s:byte(i)
        if b == 34 then out[#out + 1] = '\\"'
        elseif b == 92 then out[#out + 1] = '\\\\'
        elseif b == 10 then out[#out + 1] = '\\n'
        elseif b == 13 then out[#out + 1] = '\\r'
        elseif b == 9 then out[#out + 1] = '\\t'
        elseif b < 32 or b == 127 then out[#out + 1] = string.format('\\u%04x', b)
        else out[#out + 1] = string.char(b) end
      end
      out[#out + 1] = '"'
      return table.concat(out)
    end
    local seed = 12345
    local function rnd(n)  -- a small LCG: the test is the same every run
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n
    end
    for _ = 1, 3000 do
      local len = rnd(41)
      local bytes = {}
      for i = 1, len do
        bytes[i] = rnd(4) == 0 and special[rnd(#special) + 1] or (97 + rnd(26))
      end
      local s = string.char(unpack(bytes))
      local got, want = json.encode(s), ref(s)
      assert(got == want, string.format("%q -> %q, want %q", s, got, want))
    end
  )", slowRunOptions());
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
}

TEST_CASE("json encode/decode round trip, null, arrays and errors", "[lua]") {
  Run r("access", R"(
    local json = sluice.json
    local v = json.decode('{"a":[1,2,{"b":null}],"s":"x\\u00e9\\n","t":true,"n":-1.5e2}')
    assert(v.a[2] == 2 and v.a[3].b == json.null and v.s == "x\195\169\n" and v.t == true and v.n == -150)
    assert(json.encode({1, 2, 3}) == "[1,2,3]")
    assert(json.encode({}) == "{}")
    assert(json.encode(json.array({})) == "[]")
    assert(json.encode({a = json.null}) == '{"a":null}')
    assert(json.encode("q\"\1") == '"q\\"\\u0001"')
    assert(json.encode(json.decode("[]")) == "[]", "decoded arrays stay arrays")
    local s, err = json.encode({[1] = 1, x = 2})
    assert(s == nil and err:find("mixing"))
    s, err = json.encode(0/0)
    assert(s == nil and err:find("NaN"))
    local t = {}; t.self = t
    s, err = json.encode(t)
    assert(s == nil and err:find("deep"))
    local d, derr = json.decode('{"a":1,}')
    assert(d == nil and derr:find("offset"))
    d, derr = json.decode(string.rep("[", 100) .. string.rep("]", 100))
    assert(d == nil and derr:find("deep"))
    assert(json.decode("1 2") == nil)
    assert(json.decode('"\\ud800"') == nil, "lone surrogate")
    -- Numbers: integers as integers, others as the shortest text that reads back the same.
    assert(json.encode(250.29) == "250.29", json.encode(250.29))
    assert(json.encode({0.1, -5, 1e300, 2^53}) == "[0.1,-5,1e+300,9007199254740992]", json.encode({0.1, -5, 1e300, 2^53}))
    for _, x in ipairs({1/3, -2.5e-7, 123456.789, 5e-324, 1.7976931348623157e308}) do
      assert(json.decode(json.encode(x)) == x, "round trip of " .. tostring(x))
    end
    -- Numbers read in place, with strtod's results at the edges: underflow is 0, overflow an error.
    assert(json.decode("1e-400") == 0 and json.decode("-0.5E+1") == -5 and json.decode("0") == 0)
    assert(json.decode("123456789012345678901234567890") == 1.2345678901234568e29)
    local big, berr = json.decode("1e400")
    assert(big == nil and berr:find("number out of range", 1, true), berr)
    -- Strings with and without escapes (the unescaped ones are pushed straight from the text).
    local o = json.decode('{"plain":"abc","esc":"a\\"b","nl":"x\\ny","":""}')
    assert(o.plain == "abc" and o.esc == 'a"b' and o.nl == "x\ny" and o[""] == "", json.encode(o))
    local bad, serr = json.decode('"ab\001"')
    assert(bad == nil and serr:find("control character", 1, true), serr)
    bad, serr = json.decode('"abc')
    assert(bad == nil and serr:find("unterminated string", 1, true), serr)
    -- An object key among array keys is found whichever key comes first.
    local mixed, merr = json.encode({1, 2, 3, x = 1})
    assert(mixed == nil and merr:find("mixing", 1, true), merr)
    assert(json.encode({x = 1}) == '{"x":1}')
    -- The reused output buffer: a short document after a long one is not a prefix of it.
    assert(#json.encode({string.rep("y", 100000)}) == 100004)
    assert(json.encode({1}) == "[1]")
  )");
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
}

TEST_CASE("shared dict get/set/incr/delete/ttl from Lua", "[lua]") {
  Run r("access", R"(
    local d = sluice.shared.counters
    assert(d and sluice.shared.nothing == nil)
    assert(d:set("k", "v", 10))
    assert(d:get("k") == "v")
    assert(d:ttl("k") == 10)
    assert(d:incr("n", 1) == nil)
    assert(d:incr("n", 2, 40) == 42)
    assert(d:incr("n", 1) == 43)
    local x, err = d:incr("k", 1)
    assert(x == nil and err == "not a number")
    d:set("b", true)
    assert(d:get("b") == true)
    d:delete("k")
    assert(d:get("k") == nil)
    assert(not pcall(d.set, d, "t", {}))
  )");
  r.f.dicts->getOrCreate("counters", 1 << 20);
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
}

TEST_CASE("shared dict values expire with the injected clock and survive a new VM", "[lua]") {
  Fixture f;
  f.dicts->getOrCreate("d", 1 << 20);
  f.build({{"p.lua", policy("access", "sluice.shared.d:set('k', 'v', 5)")}}, {{"p", ""}});
  TestRequestHost host;
  REQUIRE(f.vm->newRequest(host, "r1")->run(Phase::kAccess).status == RunStatus::kContinue);
  // "Reload": a new VM on the same dicts sees the value; after the TTL it is gone.
  auto vm2 = WorkerVm::prepare(test::makeBundle({{"q.lua", policy("access", "ctx.v = sluice.shared.d:get('k'); sluice.resp.exit(200, tostring(ctx.v))", "q")}}, {{"q", ""}}),
                               {}, &f.worker, f.dicts, &f.errors);
  REQUIRE(vm2);
  {
    TestRequestHost h;
    vm2->newRequest(h, "r1")->run(Phase::kAccess);
    CHECK(h.resp_body == "v");
  }
  f.worker.clock.advance(6 * kSeconds);
  {
    TestRequestHost h;
    vm2->newRequest(h, "r1")->run(Phase::kAccess);
    CHECK(h.resp_body == "nil");
  }
}

TEST_CASE("log writes through the worker host with file:line", "[lua]") {
  Run r("log", "sluice.log(sluice.WARN, 'hello ', 42)");
  REQUIRE(r.go(Phase::kLog).status == RunStatus::kContinue);
  REQUIRE(r.f.worker.logs.size() == 1);
  CHECK(r.f.worker.logs[0] == "p.lua:2: hello 42");
}

TEST_CASE("now and get_phase", "[lua]") {
  Run r("access", "assert(sluice.now() > 1.6e9); assert(sluice.get_phase() == 'access')");
  CHECK(r.go(Phase::kAccess).status == RunStatus::kContinue);
}

// Phase rules: each call in a phase where it is not allowed names the phase and where it is.
struct PhaseRule {
  const char* call;
  const char* denied_phase;
  const char* allowed;
};

TEST_CASE("every API call refuses the phases it is not allowed in", "[lua]") {
  const PhaseRule rules[] = {
      {"sluice.resp.exit(200)", "log", "rewrite, access, aggregate"},
      {"sluice.resp.exit(200)", "header_filter", "rewrite, access, aggregate"},
      {"sluice.http.request('items', {path='/'})", "log", "rewrite, access, aggregate"},
      {"sluice.http.multi({})", "body_filter", "rewrite, access, aggregate"},
      {"sluice.sleep(0)", "balancer", "rewrite, access, aggregate"},
      {"sluice.req.set_header('a','b')", "aggregate", "rewrite, access"},
      {"sluice.req.get_body()", "log", "rewrite, access, aggregate"},
      {"sluice.resp.set_header('a','b')", "log", "rewrite, access, aggregate, header_filter"},
      {"sluice.resp.get_status()", "access", "header_filter, body_filter, log"},
      {"sluice.resp.set_status(200)", "log", "header_filter"},
      {"sluice.limit.take('x')", "log", "rewrite, access, aggregate"},
      {"sluice.limit.set_key('x', 'y')", "access", "rewrite"},
      {"sluice.risk.add('x', 1)", "header_filter", "rewrite, access, aggregate"},
      {"sluice.risk.score()", "body_filter", "rewrite, access, aggregate, header_filter, log"},
  };
  for (const auto& rule : rules) {
    Run r(rule.denied_phase, rule.call);
    RunResult res = r.go(phaseByName(rule.denied_phase));
    std::string want = std::string("p.lua:2: sluice.") +
                       std::string(rule.call).substr(7, std::string(rule.call).find('(') - 7) +
                       " is not allowed in phase '" + rule.denied_phase + "' (allowed in: " +
                       rule.allowed + ")";
    INFO(rule.call << " in " << rule.denied_phase << ": " << res.error);
    CHECK(res.status == RunStatus::kError);
    CHECK(res.error.find(want) != std::string::npos);
  }
}

TEST_CASE("request calls are refused at module top level with the file:line", "[lua]") {
  Validator v;
  auto report = v.validate(test::makeBundle({{"top.lua", "local m = sluice.req.get_method()\nreturn {}"}}));
  REQUIRE_FALSE(report.ok);
  CHECK(report.summary() ==
        "top.lua:1: sluice.req.get_method is not allowed in phase 'init' (allowed in: rewrite, "
        "access, aggregate, balancer, header_filter, body_filter, log)");
  report = v.validate(test::makeBundle({{"top.lua", "local x = sluice.ctx\nreturn {}"}}));
  CHECK(report.summary().find("top.lua:1: sluice.ctx is not allowed in phase 'init'") == 0);
  report = v.validate(test::makeBundle({{"top.lua", "local d = sluice.shared.x\nreturn {}"}}));
  CHECK(report.summary().find("sluice.shared.x is not allowed in phase 'init'") != std::string::npos);
  report = v.validate(test::makeBundle({{"top.lua", "return { v = sluice.json.encode({1}) }"}}));
  CHECK(report.ok);
}

TEST_CASE("non-yielding phases cannot yield", "[lua]") {
  Run r("log", "coroutine.yield()");
  RunResult res = r.go(Phase::kLog);
  CHECK(res.status == RunStatus::kError);
  CHECK(res.error.find("yield") != std::string::npos);
}

TEST_CASE("a bare coroutine.yield in a yielding phase is an error, not a hang", "[lua]") {
  Run r("access", "coroutine.yield()");
  RunResult res = r.go(Phase::kAccess);
  CHECK(res.status == RunStatus::kError);
  CHECK(res.error.find("outside a sluice call") != std::string::npos);
}

TEST_CASE("user coroutines work, but may not wrap a yielding sluice call", "[lua]") {
  Run r("access", R"(
    local co = coroutine.wrap(function() coroutine.yield(1); return 2 end)
    assert(co() == 1 and co() == 2)
    local ok, err = pcall(coroutine.wrap(function() return sluice.http.request("items", {path = "/"}) end))
    assert(not ok and err:find("coroutine the policy created"), err)
  )");
  RunResult res = r.go(Phase::kAccess);
  INFO(res.error);
  CHECK(res.status == RunStatus::kContinue);
}

TEST_CASE("body_filter replaces chunks, balancer picks a peer", "[lua]") {
  Fixture f;
  f.build({{"p.lua", R"(return { name = "p", phases = {
      body_filter = function(conf, ctx, chunk, eof) return (chunk:gsub("secret", "******")) .. (eof and "!" or "") end,
      balancer = function(conf, ctx) return "10.0.0.2:8080" end } })"}},
          {{"p", ""}});
  REQUIRE(f.errors.empty());
  TestRequestHost host;
  auto req = f.vm->newRequest(host, "r1");
  std::string chunk = "a secret b";
  REQUIRE(req->runBodyFilter(&chunk, true).status == RunStatus::kContinue);
  CHECK(chunk == "a ****** b!");
  std::string peer;
  REQUIRE(req->runBalancer(&peer).status == RunStatus::kContinue);
  CHECK(peer == "10.0.0.2:8080");
}

TEST_CASE("the aggregate phase must respond", "[lua]") {
  Run r("aggregate", "ctx.x = 1");
  RunResult res = r.go(Phase::kAggregate);
  CHECK(res.status == RunStatus::kError);
  CHECK(res.error.find("without a response") != std::string::npos);
}

TEST_CASE("a route without policies runs nothing", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", "error('x')")}}, {{"p", ""}});
  TestRequestHost host;
  auto req = f.vm->newRequest(host, "other");
  CHECK_FALSE(req->hasPhase(Phase::kAccess));
  CHECK(req->run(Phase::kAccess).status == RunStatus::kContinue);
  CHECK_FALSE(f.vm->routeHasPhase("other", Phase::kAccess));
  CHECK(f.vm->routeHasPhase("r1", Phase::kAccess));
}

TEST_CASE("header_filter reads the response headers", "[lua]") {
  Fixture f;
  f.build({{"p.lua", R"(return { name = "p", phases = {
      header_filter = function(conf, ctx)
        local h = sluice.resp.get_headers()
        ctx.ct = h["content-type"]
        ctx.multi = h["set-cookie"]
        ctx.one = sluice.resp.get_header("X-UPSTREAM")
        ctx.none = sluice.resp.get_header("x-missing")
      end,
      body_filter = function(conf, ctx, chunk, eof)
        return ctx.ct .. "|" .. table.concat(ctx.multi, ",") .. "|" .. ctx.one .. "|" .. tostring(ctx.none)
      end } })"}},
          {{"p", ""}});
  REQUIRE(f.errors.empty());
  TestRequestHost host;
  host.resp_status = 200;
  host.response_headers = {{"Content-Type", "text/html"}, {"Set-Cookie", "a=1"},
                           {"Set-Cookie", "b=2"}, {"X-Upstream", "u1"}};
  auto req = f.vm->newRequest(host, "r1");
  RunResult res = req->run(Phase::kHeaderFilter);
  INFO(res.error);
  REQUIRE(res.status == RunStatus::kContinue);
  std::string chunk = "x";
  REQUIRE(req->runBodyFilter(&chunk, true).status == RunStatus::kContinue);
  CHECK(chunk == "text/html|a=1,b=2|u1|nil");
}

TEST_CASE("resp.get_headers outside header_filter is a phase error", "[lua]") {
  Run r("body_filter", "sluice.resp.get_headers()");
  std::string chunk;
  RunResult res = r.req->runBodyFilter(&chunk, false);
  CHECK(res.status == RunStatus::kError);
  CHECK(res.error.find("sluice.resp.get_headers is not allowed in phase 'body_filter' (allowed in: header_filter)") != std::string::npos);
}

TEST_CASE("a yield in a filter phase is an error naming the phase", "[lua]") {
  for (const char* code : {"coroutine.yield()", "sluice.sleep(0)"}) {
    Fixture f;
    f.build({{"p.lua", std::string("return { name = \"p\", phases = { header_filter = function(conf, ctx) ") +
                           code + " end } }"}},
            {{"p", ""}});
    REQUIRE(f.errors.empty());
    TestRequestHost host;
    auto req = f.vm->newRequest(host, "r1");
    RunResult res = req->run(Phase::kHeaderFilter);
    INFO(res.error);
    CHECK(res.status == RunStatus::kError);
    CHECK(res.error.find("failed in phase 'header_filter'") != std::string::npos);
    CHECK((res.error.find("phase 'header_filter' may not yield") != std::string::npos ||
           res.error.find("is not allowed in phase 'header_filter'") != std::string::npos));
    CHECK(res.error.find("p.lua:1") != std::string::npos);
    // The VM is still usable afterwards.
    CHECK(req->run(Phase::kLog).status == RunStatus::kContinue);
  }
}

TEST_CASE("a body_filter error is counted against the policy", "[lua]") {
  Fixture f;
  f.build({{"p.lua", R"(return { name = "p", phases = {
      body_filter = function(conf, ctx, chunk, eof) if eof then error("bad tail") end return chunk end } })"}},
          {{"p", ""}});
  REQUIRE(f.errors.empty());
  TestRequestHost host;
  auto req = f.vm->newRequest(host, "r1");
  std::string chunk = "abc";
  REQUIRE(req->runBodyFilter(&chunk, false).status == RunStatus::kContinue);
  CHECK(chunk == "abc");
  chunk.clear();
  RunResult res = req->runBodyFilter(&chunk, true);
  CHECK(res.status == RunStatus::kError);
  CHECK(res.error.find("p.lua:2: bad tail") != std::string::npos);
  CHECK(f.vm->policies()[0].errors == 1);
}

}  // namespace
}  // namespace sluice::lua
