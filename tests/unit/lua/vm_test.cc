// Generations: validation messages, module shape, schemas, priority order, lifecycle and timers;
// plus the C++ SharedDict store.
#include <catch2/catch.hpp>

#include "lua/vm_internal.h"
#include "tests/unit/lua/test_host.h"

namespace sluice::lua {
namespace {

using test::Fixture;
using test::makeBundle;
using test::policy;
using test::TestRequestHost;

std::string validate(const std::vector<std::pair<std::string, std::string>>& files,
                     const std::vector<std::pair<std::string, std::string>>& attach = {}) {
  return Validator().validate(makeBundle(files, attach)).summary();
}

TEST_CASE("validator: syntax and runtime errors at top level carry file:line", "[lua]") {
  CHECK(validate({{"a.lua", "return {\n  name = 'a'\n  phases = {}\n}"}}) ==
        "a.lua:3: '}' expected (to close '{' at line 1) near 'phases'");
  CHECK(validate({{"b.lua", "local x = nil\n\nreturn x.y"}}) ==
        "b.lua:3: attempt to index local 'x' (a nil value)");
  CHECK(validate({{"c.lua", "local m = require('missing')\nreturn {}"}}) ==
        "c.lua:1: no module 'missing' in the policy bundle");
  CHECK(validate({{"d.lua", "return require('e')"}, {"e.lua", "return require('d')"}})
            .find("require loop") != std::string::npos);
  // Every broken file is reported, not only the first.
  std::string two = validate({{"x.lua", "error('one')"}, {"y.lua", "error('two')"}});
  CHECK(two == "x.lua:1: one\ny.lua:1: two");
}

TEST_CASE("validator: module shape", "[lua]") {
  CHECK(validate({{"a.lua", "return { phases = {} }"}}) == "a.lua: policy module needs a string 'name'");
  CHECK(validate({{"a.lua", "return { name = 'a', phases = { acces = function() end } }"}}) ==
        "a.lua: policy 'a': 'acces' is not a phase (phases: rewrite, access, aggregate, balancer, "
        "header_filter, body_filter, log)");
  CHECK(validate({{"a.lua", "return { name = 'a', phases = { access = 1 } }"}}) ==
        "a.lua: policy 'a': phases.access must be a function");
  CHECK(validate({{"a.lua", "return { name = 'a', priority = 1.5, phases = {} }"}}) ==
        "a.lua: policy 'a': 'priority' must be an integer");
  CHECK(validate({{"a.lua", "return { name = 'a', phases = {}, colour = 1 }"}}) ==
        "a.lua: policy 'a': unknown field 'colour'");
  CHECK(validate({{"a.lua", "return { name = 'a', phases = {}, schema = { x = { type = 'str' } } }"}})
            .find("schema.x.type must be one of") != std::string::npos);
  CHECK(validate({{"a.lua", "return { name = 'same', phases = {} }"},
                  {"b.lua", "return { name = 'same', phases = {} }"}}) ==
        "b.lua: policy name 'same' is already used by a.lua");
  // A module without `phases` is a library, not an error.
  CHECK(validate({{"lib.lua", "return { helper = 1 }"}}).empty());
}

const char* kSchemaPolicy = R"(return { name = "s", phases = { access = function(conf, ctx)
    sluice.resp.exit(200, sluice.json.encode(conf)) end },
  schema = {
    rate = { type = "integer", required = true, min = 1, max = 100 },
    mode = { type = "string", enum = { "block", "log" }, default = "log" },
    ratio = { type = "number", default = 0.5 },
    on = { type = "boolean" },
    tags = { type = "array", items = "string" },
    nested = { type = "object", fields = { a = { type = "string", required = true } } },
  } })";

TEST_CASE("schema: defaults are filled and the policy sees the checked config", "[lua]") {
  Fixture f;
  f.build({{"s.lua", kSchemaPolicy}}, {{"s", R"({"rate":5,"tags":["a"],"nested":{"a":"x"}})"}});
  INFO(f.errorText());
  REQUIRE(f.errors.empty());
  TestRequestHost host;
  REQUIRE(f.vm->newRequest(host, "r1")->run(Phase::kAccess).status == RunStatus::kResponded);
  CHECK(host.resp_body.find(R"("mode":"log")") != std::string::npos);
  CHECK(host.resp_body.find(R"("ratio":0.5)") != std::string::npos);
  CHECK(host.resp_body.find(R"("rate":5)") != std::string::npos);
}

TEST_CASE("schema: each kind of violation has a clear message", "[lua]") {
  auto check = [](const std::string& conf) {
    return validate({{"s.lua", kSchemaPolicy}}, {{"s", conf}});
  };
  std::string p = "sluice.yaml:10: route 'r1' policy 's': config ";
  CHECK(check("{}") == p + "field 'rate': required");
  CHECK(check(R"({"rate":"5"})") == p + "field 'rate': expected integer, got string");
  CHECK(check(R"({"rate":2.5})") == p + "field 'rate': expected integer, got number");
  CHECK(check(R"({"rate":0})") == p + "field 'rate': must be at least 1");
  CHECK(check(R"({"rate":101})") == p + "field 'rate': must be at most 100");
  CHECK(check(R"({"rate":1,"mode":"drop"})") == p + "field 'mode': must be one of block, log");
  CHECK(check(R"({"rate":1,"on":null})") == p + "field 'on': expected boolean, got null");
  CHECK(check(R"({"rate":1,"tags":[1]})") == p + "field 'tags[1]': expected string, got number");
  CHECK(check(R"({"rate":1,"nested":{}})") == p + "field 'nested.a': required");
  CHECK(check(R"({"rate":1,"typo":1})") == p + "field 'typo': unknown field");
  CHECK(check(R"({"rate":1)") .find("config is not valid JSON") != std::string::npos);
  CHECK(validate({{"s.lua", kSchemaPolicy}}, {{"nope", "{}"}}) ==
        "sluice.yaml:10: route 'r1' policy 'nope': no such policy");
}

TEST_CASE("configure can precompute or reject a config", "[lua]") {
  const char* src = R"(return { name = "c", phases = { access = function(conf) sluice.resp.exit(200, conf.upper) end },
    configure = function(conf)
      if conf.word == "bad" then return nil, "bad word" end
      return { upper = string.upper(conf.word) }
    end })";
  CHECK(validate({{"c.lua", src}}, {{"c", R"({"word":"bad"})"}}) ==
        "sluice.yaml:10: route 'r1' policy 'c': configure rejected the config: bad word");
  Fixture f;
  f.build({{"c.lua", src}}, {{"c", R"({"word":"hi"})"}});
  TestRequestHost host;
  f.vm->newRequest(host, "r1")->run(Phase::kAccess);
  CHECK(host.resp_body == "HI");
}

TEST_CASE("policies run by priority, higher first, ties by name", "[lua]") {
  Fixture f;
  auto p = [](const std::string& name, int prio) {
    return std::make_pair(name + ".lua",
                          policy("access", "ctx.order = (ctx.order or '') .. '" + name + ",'", name, prio));
  };
  f.build({p("zeta", 10), p("alpha", 10), p("low", -5), p("high", 100),
           {"end.lua", policy("access", "sluice.resp.exit(200, ctx.order)", "end", -100)}},
          {{"low", ""}, {"zeta", ""}, {"end", ""}, {"alpha", ""}, {"high", ""}});
  INFO(f.errorText());
  REQUIRE(f.errors.empty());
  TestRequestHost host;
  REQUIRE(f.vm->newRequest(host, "r1")->run(Phase::kAccess).status == RunStatus::kResponded);
  CHECK(host.resp_body == "high,alpha,zeta,low,");
}

TEST_CASE("resp.exit in an early policy skips later ones; log still runs", "[lua]") {
  Fixture f;
  f.build({{"a.lua", R"(return { name = "a", priority = 2, phases = {
              access = function(conf, ctx) ctx.a = true; sluice.resp.exit(429) end,
              log = function(conf, ctx) sluice.log(sluice.INFO, "a log ", tostring(ctx.b)) end } })"},
           {"b.lua", policy("access", "ctx.b = true", "b", 1)}},
          {{"a", ""}, {"b", ""}});
  TestRequestHost host;
  auto req = f.vm->newRequest(host, "r1");
  REQUIRE(req->run(Phase::kAccess).status == RunStatus::kResponded);
  CHECK(host.resp_status == 429);
  REQUIRE(req->run(Phase::kLog).status == RunStatus::kContinue);
  CHECK(f.worker.logs.back() == "a.lua:3: a log nil");
}

TEST_CASE("lifecycle: init_worker timers arm at commit, retire runs them premature, then destroy", "[lua]") {
  Fixture f;
  const char* src = R"(
    local fired = {}
    return { name = "t", phases = { log = function() end },
      init_worker = function()
        assert(sluice.timer.every(1, function(premature, tag)
          sluice.shared.d:incr(premature and "premature" or "ticks", 1, 0)
        end, "tag"))
        assert(sluice.timer.at(10, function(premature) sluice.shared.d:set("at", premature) end))
      end,
      destroy = function() sluice.shared.d:set("destroyed", true) end,
    })";
  f.dicts->getOrCreate("d", 1 << 20);
  std::vector<std::string> errors;
  auto vm = WorkerVm::prepare(makeBundle({{"t.lua", src}}, {{"t", ""}}), {}, &f.worker, f.dicts, &errors);
  INFO(errors.size());
  REQUIRE(vm);
  f.worker.advance(5 * kSeconds);
  CHECK(f.worker.pending() == 0);  // nothing armed before commit
  vm->commit();
  CHECK(f.worker.pending() == 2);
  f.worker.advance(3500 * kMillis);
  auto d = f.dicts->find("d");
  SharedValue v;
  REQUIRE(d->get("ticks", &v));
  CHECK(std::get<double>(v) == 3);
  vm->retire();
  CHECK(f.worker.pending() == 0);
  REQUIRE(d->get("premature", &v));
  CHECK(std::get<double>(v) == 1);  // the every-timer, told once
  REQUIRE(d->get("at", &v));
  CHECK(std::get<bool>(v) == true);
  REQUIRE(d->get("destroyed", &v));
  CHECK(vm->pendingTimers() == 0);
}

TEST_CASE("timers: callback errors are logged, caps hold, phases are checked", "[lua]") {
  Fixture f;
  VmOptions opts;
  opts.max_timers = 2;
  f.build({{"p.lua", policy("access", R"(
      assert(sluice.timer.at(0, function() error("in timer") end))
      assert(sluice.timer.at(5, function() end))
      local ok, err = sluice.timer.at(1, function() end)
      assert(ok == nil and err:find("too many"))
      assert(not pcall(sluice.timer.every, 0, function() end))
    )")}},
          {{"p", ""}}, opts);
  TestRequestHost host;
  RunResult r = f.vm->newRequest(host, "r1")->run(Phase::kAccess);
  INFO(r.error);
  REQUIRE(r.status == RunStatus::kContinue);
  f.worker.advance(1);
  REQUIRE_FALSE(f.worker.logs.empty());
  CHECK(f.worker.logs[0].find("p.lua:3: in timer") != std::string::npos);
  INFO(f.worker.logs[0]);
  CHECK(validate({{"t.lua", "sluice.timer.at(1, function() end)\nreturn {}"}})
            .find("sluice.timer.at is not allowed in phase 'init'") != std::string::npos);
}

TEST_CASE("init_worker failure fails prepare", "[lua]") {
  Fixture f;
  f.build({{"p.lua", "return { name = 'p', phases = {}, init_worker = function() error('no') end }"}}, {});
  CHECK_FALSE(f.vm);
  CHECK(f.errorText().find("p.lua: init_worker failed: p.lua:1: no") == 0);
}

TEST_CASE("memory is measured and exported", "[lua]") {
  Fixture f;
  f.build({{"p.lua", policy("access", "")}}, {{"p", ""}});
  CHECK(f.vm->memoryBytes() > 10000);
  CHECK(f.vm->memoryBytes() < 4 << 20);
}

TEST_CASE("SmallBlocks: freed blocks are reused by size class within the byte bound", "[lua]") {
  SmallBlocks sb;
  sb.keep = 96;
  void* a = sb.take(20);  // class 32
  void* b = sb.take(32);
  void* c = sb.take(17);
  void* d = sb.take(200);  // class 208
  sb.give(a, 20);
  sb.give(b, 32);
  sb.give(c, 17);  // 96 bytes held: the bound
  CHECK(sb.bytes == 96);
  sb.give(d, 200);  // past the bound: back to malloc
  CHECK(sb.bytes == 96);
  CHECK(sb.take(25) == c);  // last in, first out, any size of the class
  CHECK(sb.take(32) == b);
  CHECK(sb.bytes == 32);
  void* e = sb.take(48);  // another class: a fresh block
  CHECK(e != a);
  sb.give(e, 48);
  CHECK(sb.bytes == 80);
  std::free(b);
  std::free(c);
}  // the rest is freed with the lists

TEST_CASE("the Lua allocator: strings and tables grow and shrink across size classes", "[lua]") {
  // Growth within a class keeps the block, across classes and past 256 bytes moves it: the
  // bytes must survive every move, with and without the free lists.
  for (size_t cache : {size_t{0}, size_t{4096}, size_t{256} << 10}) {
    Fixture f;
    VmOptions opts;
    opts.small_block_cache = cache;
    f.build({{"p.lua", policy("access", R"(
      local parts, t = {}, {}
      for i = 1, 600 do
        parts[#parts + 1] = string.char(48 + i % 10)
        local s = table.concat(parts)
        assert(#s == i and s:sub(-1) == string.char(48 + i % 10))
        t[i] = s
        if i % 7 == 0 then t[i - 3] = nil end
      end
      for i = 600, 1, -1 do t[i] = nil end
      local h = {}
      for i = 1, 300 do h["k" .. i] = i end
      for i = 1, 300 do assert(h["k" .. i] == i) end
    )")}},
            {{"p", ""}}, opts);
    REQUIRE(f.errors.empty());
    for (int round = 0; round < 3; round++) {
      TestRequestHost host;
      RunResult r = f.vm->newRequest(host, "r1")->run(Phase::kAccess);
      INFO(r.error);
      CHECK(r.status == RunStatus::kContinue);
    }
    CHECK(f.vm->memoryBytes() < 4 << 20);
    CHECK(f.vm->core().small_blocks.bytes <= cache);
  }
}

TEST_CASE("bundle hash changes with sources and attachments", "[lua]") {
  auto a = makeBundle({{"p.lua", "return {}"}}, {{"p", "{}"}});
  auto b = makeBundle({{"p.lua", "return {}"}}, {{"p", "{}"}});
  auto c = makeBundle({{"p.lua", "return { }"}}, {{"p", "{}"}});
  auto d = makeBundle({{"p.lua", "return {}"}}, {{"p", "{\"x\":1}"}});
  CHECK(a->hash() == b->hash());
  CHECK(a->hash() != c->hash());
  CHECK(a->hash() != d->hash());
}

TEST_CASE("the shipped policy directory validates", "[lua]") {
  auto b = std::make_shared<PolicyBundle>();
  std::string err;
  REQUIRE(loadPolicyDirectory(std::string(SLUICE_SOURCE_DIR) + "/conf/policies", b.get(), &err));
  CHECK(b->files().count("item_page.lua") == 1);
  auto report = Validator().validate(b);
  INFO(report.summary());
  CHECK(report.ok);
}

TEST_CASE("SharedDict: TTL, LRU eviction within the byte bound, incr", "[lua]") {
  ManualClock clock(kSeconds);
  SharedDict d("d", 1000, clock);
  CHECK(d.set("a", std::string(100, 'x'), kSeconds) == DictStatus::kOk);
  SharedValue v;
  REQUIRE(d.get("a", &v));
  clock.advance(2 * kSeconds);
  CHECK_FALSE(d.get("a", &v));
  for (int i = 0; i < 20; i++) d.set("k" + std::to_string(i), std::string(100, 'y'), 0);
  CHECK(d.usedBytes() <= 1000);
  CHECK(d.get("k19", &v));
  CHECK_FALSE(d.get("k0", &v));
  CHECK(d.set("huge", std::string(2000, 'z'), 0) == DictStatus::kNoMemory);
  double out = 0;
  CHECK(d.incr("n", 1, nullptr, 0, &out) == DictStatus::kNotFound);
  double init = 10;
  CHECK(d.incr("n", 1, &init, 0, &out) == DictStatus::kOk);
  CHECK(out == 11);
  CHECK(d.incr("k19", 1, nullptr, 0, &out) == DictStatus::kNotANumber);
  SharedDicts all(clock);
  auto x = all.getOrCreate("x", 100);
  CHECK(all.getOrCreate("x", 999) == x);
  CHECK(all.find("y") == nullptr);
}

}  // namespace
}  // namespace sluice::lua
