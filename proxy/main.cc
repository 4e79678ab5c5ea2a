// sluice: the flash-sale edge proxy. `sluice -c FILE` runs, `sluice -t -c FILE` checks a config.
#include <signal.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "core/log.h"
#include "proxy/config/config_loader.h"
#include "proxy/server/server.h"

namespace {

void usage(FILE* out) {
  fprintf(out,
          "usage: sluice [-c FILE] [-t] [-s reload|stop|quit|reopen] [--version]\n"
          "  -c, --config FILE  configuration file (default conf/sluice.yaml)\n"
          "  -t, --test         validate the configuration and exit (0 ok, 1 errors)\n"
          "  -s SIGNAL          signal the running sluice named by the config's pid_file:\n"
          "                     reload (HUP), stop (TERM, drain), quit (QUIT), reopen (USR1, logs)\n"
          "  -v, --version      print the version and exit\n");
}

// `sluice -s reload`: like nginx, find the running instance through the pid file its config names.
int signalRunning(const sluice::Config& cfg, const std::string& name) {
  int sig = name == "reload" ? SIGHUP : name == "stop" ? SIGTERM : name == "quit" ? SIGQUIT
          : name == "reopen" ? SIGUSR1 : 0;
  if (sig == 0) {
    fprintf(stderr, "sluice: -s takes reload, stop, quit or reopen, not '%s'\n", name.c_str());
    return 2;
  }
  if (cfg.pid_file.empty()) {
    fprintf(stderr, "sluice: %s has no pid_file: cannot find the running instance\n", cfg.source_path.c_str());
    return 1;
  }
  FILE* f = fopen(cfg.pid_file.c_str(), "r");
  long pid = 0;
  if (!f || fscanf(f, "%ld", &pid) != 1 || pid <= 0) {
    fprintf(stderr, "sluice: cannot read a pid from %s%s\n", cfg.pid_file.c_str(),
            f ? "" : " (is sluice running?)");
    if (f) fclose(f);
    return 1;
  }
  fclose(f);
  if (kill(static_cast<pid_t>(pid), sig) != 0) {
    fprintf(stderr, "sluice: signal %s to pid %ld: %s\n", name.c_str(), pid, strerror(errno));
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path = "conf/sluice.yaml";
  bool test_only = false;
  std::string signal_name;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if ((a == "-c" || a == "--config") && i + 1 < argc) {
      path = argv[++i];
    } else if (a == "-t" || a == "--test") {
      test_only = true;
    } else if (a == "-s" && i + 1 < argc) {
      signal_name = argv[++i];
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
  if (!signal_name.empty()) return signalRunning(*result.config, signal_name);
  const auto& cfg = *result.config;
  std::string err;
  sluice::LogLevel level;
  if (sluice::log::parseLevel(cfg.log_level, &level)) sluice::log::setLevel(level);
  if (!sluice::log::setTarget(cfg.error_log, &err)) fprintf(stderr, "sluice: %s\n", err.c_str());
  sluice::Server server(result.config);
  return server.run();
}
