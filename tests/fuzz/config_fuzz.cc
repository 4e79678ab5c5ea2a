// YAML config validation: loadConfigString must never crash, throw or hang on any file an
// operator (or a bad deploy) could write; it returns a Config or errors, never both and never
// neither. An accepted Config must hold what the runtime relies on.
//
// Inputs that name an admin token_file are skipped: the loader reads that path from disk, and a
// fuzzer must not wander the file system (/dev/zero would never end).
#include <re2/re2.h>

#include <string>

#include "proxy/config/config_loader.h"
#include "proxy/router/router.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  std::string yaml(reinterpret_cast<const char*>(data), size);
  if (yaml.find("token_file") != std::string::npos) return -1;  // -1: not added to the corpus
  ConfigLoadResult r = loadConfigString(yaml, "fuzz.yaml");
  FUZZ_CHECK((r.config != nullptr) == r.errors.empty());
  for (const auto& e : r.errors) {
    FUZZ_CHECK(!e.message.empty());
    FUZZ_CHECK(e.line >= 0 && e.col >= 0);
    FUZZ_CHECK(e.format().rfind("fuzz.yaml", 0) == 0);
  }
  if (!r.ok()) return 0;

  const Config& c = *r.config;
  FUZZ_CHECK(c.workers > 0);
  FUZZ_CHECK(!c.listeners.empty());
  FUZZ_CHECK(c.client.max_headers > 0 && c.client.buffer_size > 0);
  for (const auto& u : c.upstreams) {
    FUZZ_CHECK(!u.servers.empty());
    for (const auto& s : u.servers) FUZZ_CHECK(s.port > 0 && s.weight > 0);
  }
  for (const auto& route : c.routes) {
    if (route.direct_status == 0) FUZZ_CHECK(c.findUpstream(route.upstream) != nullptr);
    if (route.path_kind == PathMatchKind::kRegex) FUZZ_CHECK(route.regex && route.regex->ok());
  }
  // The router built from it must answer for any request.
  Router router(c);
  for (const char* path : {"/", "/api/items/1", "/login", ""}) {
    int m = router.match("shop.example.com:8080", path, "GET");
    FUZZ_CHECK(m >= -1 && m < static_cast<int>(c.routes.size()));
  }
  return 0;
}
