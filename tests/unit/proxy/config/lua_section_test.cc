// The `lua:` section and routes' `policies:` / `aggregate:` (proxy/config/lua_section.cc):
// validation at load with file:line errors, YAML config -> JSON checked against the schema.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "proxy/config/config_loader.h"
#include "proxy/config/lua_config.h"

namespace sluice {
namespace {

namespace fs = std::filesystem;

struct PolicyDir {
  fs::path dir;
  PolicyDir() {
    char tmpl[] = "/tmp/sluice-lua-cfg-XXXXXX";
    dir = mkdtemp(tmpl);
  }
  ~PolicyDir() { fs::remove_all(dir); }
  void write(const std::string& name, const std::string& text) {
    std::ofstream(dir / name) << text;
  }
};

const char* kGate = R"(return {
  name = "gate",
  schema = { limit = { type = "integer", default = 5, min = 1 }, mode = { type = "string", default = "a" } },
  phases = { access = function(conf, ctx) end },
})";

std::string config(const PolicyDir& d, const std::string& routes) {
  return "listeners:\n  - address: 127.0.0.1:8080\nupstreams:\n  app:\n    servers:\n"
         "      - address: 127.0.0.1:9080\nlua:\n  policies_dir: " + d.dir.string() +
         "\n  time_budget: 20ms\nroutes:\n" + routes;
}

std::string allErrors(const ConfigLoadResult& r) {
  std::string s;
  for (const auto& e : r.errors) s += e.format() + "\n";
  return s;
}

TEST_CASE("lua section: a valid attachment builds a validated bundle") {
  PolicyDir d;
  d.write("gate.lua", kGate);
  auto r = loadConfigString(config(d, "  - name: r\n    upstream: app\n    policies:\n"
                                      "      - { name: gate, config: { limit: 7, mode: \"1\" } }\n"),
                            "t.yaml");
  INFO(allErrors(r));
  REQUIRE(r.ok());
  REQUIRE(r.config->lua);
  CHECK(r.config->lua->vm.budget == 20 * kMillis);
  REQUIRE(r.config->lua->bundle->routes().size() == 1);
  // A plain 7 is a number, a quoted "1" stays a string.
  CHECK(r.config->lua->bundle->routes()[0].policies[0].config_json == "{\"limit\":7,\"mode\":\"1\"}");
}

TEST_CASE("lua section: a syntax error is reported as file:line") {
  PolicyDir d;
  d.write("bad.lua", "local x = = 1\n");
  auto r = loadConfigString(config(d, "  - name: r\n    upstream: app\n"), "t.yaml");
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(allErrors(r), Catch::Contains((d.dir / "bad.lua").string() + ":1:"));
}

TEST_CASE("lua section: a config that breaks the schema points at the YAML line") {
  PolicyDir d;
  d.write("gate.lua", kGate);
  auto r = loadConfigString(config(d, "  - name: r\n    upstream: app\n    policies:\n"
                                      "      - { name: gate, config: { limit: 0 } }\n"),
                            "t.yaml");
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(allErrors(r), Catch::Contains("t.yaml:14:9:"));
  CHECK_THAT(allErrors(r), Catch::Contains("limit"));
}

TEST_CASE("lua section: an aggregation route needs an aggregate phase, not an upstream") {
  PolicyDir d;
  d.write("gate.lua", kGate);
  auto r = loadConfigString(config(d, "  - name: r\n    aggregate: gate\n"), "t.yaml");
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(allErrors(r), Catch::Contains("none of its policies has an aggregate phase"));
  CHECK_THAT(allErrors(r), Catch::Contains("t.yaml:"));
  // And without any: still "missing 'upstream'".
  auto r2 = loadConfigString(config(d, "  - name: r\n"), "t.yaml");
  CHECK_THAT(allErrors(r2), Catch::Contains("missing 'upstream'"));
}

}  // namespace
}  // namespace sluice
