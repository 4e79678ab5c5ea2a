#pragma once
// The process: binds every socket up front (so a port in use fails at start, not in a worker),
// starts N data workers and runs the control worker (signals, admin, health checks) on the
// calling thread until a stop signal has drained everything.
#include <uv.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "proxy/config/config.h"
#include "proxy/server/generation.h"

namespace sluice {

class Worker;
class HealthChecker;
class ReloadWatcher;

class Server {
 public:
  explicit Server(ConfigPtr config);
  ~Server();
  // Returns the process exit code.
  int run();

  GenerationPtr generation() const;
  int64_t startedAtUs() const { return started_us_; }
  size_t workerCount() const { return workers_.size(); }
  uint64_t requestsServed() const;
  // Control thread only. Re-reads the config file; on any error the running generation keeps
  // serving and `message` says why (file:line:col lines). Returns true when the new one is live.
  bool reload(std::string* message);
  std::string lastReloadResult() const { return last_reload_; }
  uint64_t reloadsOk() const { return reloads_ok_; }
  uint64_t reloadsFailed() const { return reloads_failed_; }
  // The metrics registry (GET /metrics renders it); null before run().
  ProxyMetrics* metrics() const { return metrics_.get(); }
  // Lua: every data worker's VM statistics (copied under each worker's lock), and GET /lua.
  std::vector<struct LuaWorkerStats> luaStats() const;
  std::string luaStatusJson() const;

 private:
  static void onSignal(uv_signal_t* s, int signum);
  void shutdown(bool graceful);

  ConfigPtr config_;
  std::shared_ptr<ProxyMetrics> metrics_;  // before the workers: outlives their pools
  GenerationPtr generation_;
  std::unique_ptr<Worker> control_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<HealthChecker> health_;
  std::unique_ptr<ReloadWatcher> watcher_;
  uv_signal_t sigterm_, sigquit_, sigint_, sighup_, sigusr1_;
  std::string last_reload_ = "none";
  uint64_t reloads_ok_ = 0;
  uint64_t reloads_failed_ = 0;
  bool stopping_ = false;
  int64_t started_us_ = 0;
};

}  // namespace sluice
