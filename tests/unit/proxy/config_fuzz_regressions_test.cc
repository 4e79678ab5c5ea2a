// Regression tests for config-loading bugs the fuzz targets found (tests/fuzz/config_fuzz.cc);
// each input is kept in tests/fuzz/corpus/config/.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <string>
#include <thread>

#include "proxy/config/config_loader.h"

namespace sluice {
namespace {

std::string joinErrors(const std::vector<ConfigError>& errors) {
  std::string out;
  for (const auto& e : errors) out += e.format() + "\n";
  return out;
}

TEST_CASE("Regression: a config starting with ',' hung the loader and ate all memory",
          "[proxy][config][fuzz]") {
  // tests/fuzz/corpus/config/timeout-leading-comma-loops-yaml-cpp. YAML::LoadAll (yaml-cpp 0.7,
  // jbeder/yaml-cpp#1040) returned the same empty document forever; `sluice -t` and a reload on
  // the control thread never came back.
  for (const char* yaml : {",", ",listenser: []\n6\n--listeners: []\n", "  ,a: 1\n", "# c\n,\n"}) {
    CAPTURE(yaml);
    // On a thread of its own, so the bug coming back fails fast instead of eating all memory.
    std::packaged_task<ConfigLoadResult()> task([yaml] { return loadConfigString(yaml, "t.yaml"); });
    auto fut = task.get_future();
    std::thread(std::move(task)).detach();
    if (fut.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
      fprintf(stderr, "loadConfigString(%s) did not return within 20s\n", yaml);
      std::abort();
    }
    ConfigLoadResult r = fut.get();
    INFO(joinErrors(r.errors));
    REQUIRE_FALSE(r.ok());
    REQUIRE(r.errors.size() == 1);
    CHECK_THAT(r.errors[0].message, Catch::Contains("YAML syntax error: unexpected ','"));
    CHECK(r.errors[0].line >= 1);
  }
}

TEST_CASE("Regression: the leading-comma fix keeps multi-document and empty-file errors",
          "[proxy][config][fuzz]") {
  ConfigLoadResult two = loadConfigString(
      "listeners: [{address: 127.0.0.1:8080}]\n---\n,\n", "t.yaml");
  INFO(joinErrors(two.errors));
  REQUIRE_FALSE(two.ok());
  bool found = false;
  for (const auto& e : two.errors)
    if (e.message.find("only one YAML document") != std::string::npos) {
      found = true;
      CHECK(e.line == 2);
    }
  CHECK(found);
  ConfigLoadResult empty = loadConfigString("# nothing\n", "t.yaml");
  REQUIRE(empty.errors.size() == 1);
  CHECK_THAT(empty.errors[0].message, Catch::Contains("the configuration is empty"));
}

}  // namespace
}  // namespace sluice
