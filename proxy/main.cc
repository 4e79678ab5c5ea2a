// sluice: the flash-sale edge proxy. `sluice -c FILE` runs, `sluice -t -c FILE` checks a config.
#include <cstdio>
#include <cstring>
#include <string>

#include "core/log.h"
#include "proxy/config/config_loader.h"
#include "proxy/server/server.h"

namespace {

void usage(FILE* out) {
  fprintf(out,
          "usage: sluice [-c FILE] [-t] [--version]\n"
          "  -c, --config FILE  configuration file (default conf/sluice.yaml)\n"
          "  -t, --test         validate the configuration and exit (0 ok, 1 errors)\n"
          "  -v, --version      print the version and exit\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string path = "conf/sluice.yaml";
  bool test_only = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if ((a == "-c" || a == "--config") && i + 1 < argc) {
      path = argv[++i];
    } else if (a == "-t" || a == "--test") {
      test_only = true;
    } else if (a == "-v" || a == "--version") {
      printf("sluice %s\n", SLUICE_VERSION);
      return 0;
    } else if (a == "-h" || a == "--help") {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "sluice: unknown argument '%s'\n", a.c_str());
      usage(stderr);
      return 2;
    }
  }

  auto result = sluice::loadConfigFile(path);
  if (!result.ok()) {
    for (const auto& e : result.errors) fprintf(stderr, "%s\n", e.format().c_str());
    if (result.errors.empty()) fprintf(stderr, "%s: invalid configuration\n", path.c_str());
    return 1;
  }
  if (test_only) {
    printf("%s: configuration is valid\n", path.c_str());
    return 0;
  }
  const auto& cfg = *result.config;
  std::string err;
  sluice::LogLevel level;
  if (sluice::log::parseLevel(cfg.log_level, &level)) sluice::log::setLevel(level);
  if (!sluice::log::setTarget(cfg.error_log, &err)) fprintf(stderr, "sluice: %s\n", err.c_str());
  sluice::Server server(result.config);
  return server.run();
}
