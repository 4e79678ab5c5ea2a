#include "proxy/server/server.h"

#include <signal.h>
#include <sys/resource.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "proxy/config/config_loader.h"
#include "proxy/config/lua_config.h"
#include "proxy/cluster/risk_sync.h"
#include "proxy/server/reload_watcher.h"
#include "proxy/server/worker.h"
#include "proxy/upstream/health_checker.h"

namespace sluice {

namespace {
bool writePidFile(const std::string& path, std::string* err);

// max_open_files: the RLIMIT_NOFILE soft limit, process-wide. Before the workers resolve
// client.max_connections "auto" from it, at start and on each reload.
void applyOpenFilesLimit(uint64_t wanted) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t target = wanted == 0 ? rl.rlim_max : static_cast<rlim_t>(wanted);
  if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max) {
    LOG_WARN("max_open_files %llu is above the hard limit %llu: using %llu",
             static_cast<unsigned long long>(target), static_cast<unsigned long long>(rl.rlim_max),
             static_cast<unsigned long long>(rl.rlim_max));
    target = rl.rlim_max;
  }
  if (target == rl.rlim_cur) return;
  rlim_t before = rl.rlim_cur;
  rl.rlim_cur = target;
  if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    LOG_WARN("setrlimit(RLIMIT_NOFILE, %llu): %s", static_cast<unsigned long long>(target),
             strerror(errno));
    return;
  }
  LOG_INFO("open files limit %llu (was %llu, hard limit %llu)",
           static_cast<unsigned long long>(target), static_cast<unsigned long long>(before),
           static_cast<unsigned long long>(rl.rlim_max));
}
}  // namespace

Server::Server(ConfigPtr config) : config_(std::move(config)) {}

Server::~Server() = default;

GenerationPtr Server::generation() const { return generation_; }

uint64_t Server::requestsServed() const {
  uint64_t n = 0;
  for (const auto& w : workers_) n += w->requestsServed();
  return n;
}

int Server::run() {
  started_us_ = wallMicros();
  signal(SIGPIPE, SIG_IGN);
  applyOpenFilesLimit(config_->max_open_files);
  metrics_ = std::make_shared<ProxyMetrics>(static_cast<size_t>(config_->workers), this);
  generation_ = std::make_shared<Generation>(config_, nullptr, metrics_);
  const Config& cfg = *config_;

  control_ = std::make_unique<Worker>(this, -1, true);
  for (int i = 0; i < cfg.workers; i++) workers_.push_back(std::make_unique<Worker>(this, i, false));

  std::string err;
  // SO_REUSEPORT would let this process silently share a port with another sluice (or a stale
  // one) and split its traffic: first prove each port is free with a plain bind.
  for (const auto& l : cfg.listeners) {
    int probe = bindListener(l.host, l.port, false, &err);
    if (probe < 0) {
      LOG_ERROR("%s (is another sluice running?)", err.c_str());
      return 1;
    }
    ::close(probe);
  }
  for (auto& w : workers_) {
    for (const auto& l : cfg.listeners) {
      int fd = bindListener(l.host, l.port, true, &err);
      if (fd < 0) {
        LOG_ERROR("%s", err.c_str());
        return 1;
      }
      w->addListener(BoundSocket{fd, l, false});
    }
    w->setGeneration(generation_);
    if (!w->setupDecisionLog(cfg.access_log.decisions_target, &err)) {
      LOG_ERROR("log.decisions: %s", err.c_str());
      return 1;
    }
    if (!w->setupAccessLog(cfg.access_log.target, &err)) {
      LOG_ERROR("%s", err.c_str());
      return 1;
    }
  }
  control_->setGeneration(generation_);
  control_->setupAccessLog("off", &err);
  if (cfg.admin.enabled) {
    ListenerConfig al;
    al.name = "admin";
    al.host = cfg.admin.host;
    al.port = cfg.admin.port;
    int fd = bindListener(al.host, al.port, false, &err);
    if (fd < 0) {
      LOG_ERROR("admin: %s", err.c_str());
      return 1;
    }
    control_->addListener(BoundSocket{fd, al, true});
  }

  uv_loop_t* loop = control_->loop();
  health_ = std::make_unique<HealthChecker>(loop, generation_->clusters);
  health_->start();
  uv_signal_t* sigs[] = {&sigterm_, &sigquit_, &sigint_, &sighup_, &sigusr1_};
  int nums[] = {SIGTERM, SIGQUIT, SIGINT, SIGHUP, SIGUSR1};
  for (int i = 0; i < 5; i++) {
    uv_signal_init(loop, sigs[i]);
    sigs[i]->data = this;
    uv_signal_start(sigs[i], onSignal, nums[i]);
  }
  RiskSync::configure(loop, cfg);
  watcher_ = std::make_unique<ReloadWatcher>(loop, [this] {
    std::string message;
    reload(&message);
  });
  watcher_->configure(cfg);
  control_->on_shutdown = [this] {
    watcher_->stop();
    RiskSync::shutdown();
    health_->stop();
    uv_close(reinterpret_cast<uv_handle_t*>(&sigterm_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigquit_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigint_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sighup_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigusr1_), nullptr);
  };
  if (!cfg.pid_file.empty() && !writePidFile(cfg.pid_file, &err)) {
    LOG_ERROR("%s", err.c_str());
    return 1;
  }

  for (auto& w : workers_) w->start();
  for (const auto& l : cfg.listeners)
    LOG_INFO("sluice %s listening on %s:%u (%d workers)", SLUICE_VERSION, l.host.c_str(), l.port,
             cfg.workers);
  if (cfg.admin.enabled)
    LOG_INFO("admin listening on %s:%u", cfg.admin.host.c_str(), cfg.admin.port);

  control_->runHere();
  for (auto& w : workers_) w->join();
  if (!cfg.pid_file.empty()) ::unlink(cfg.pid_file.c_str());
  LOG_INFO("sluice stopped");
  workers_.clear();
  control_.reset();
  return 0;
}

void Server::onSignal(uv_signal_t* s, int signum) {
  auto* self = static_cast<Server*>(s->data);
  if (signum == SIGHUP) {
    std::string msg;
    self->reload(&msg);
    return;
  }
  if (signum == SIGUSR1) {
    // logrotate: the files were renamed; open new ones under the configured names.
    std::string err;
    const auto& target = self->generation()->config->error_log;
    if (target != "stderr" && target != "stdout" && !log::setTarget(target, &err))
      LOG_ERROR("reopening the error log: %s", err.c_str());
    for (auto& w : self->workers_) {
      Worker* worker = w.get();
      worker->post([worker] { worker->reopenAccessLog(); });
    }
    LOG_INFO("received %s, log files reopened", strsignal(signum));
    return;
  }
  // A second Ctrl-C means "now": skip the drain.
  bool graceful = !(signum == SIGINT && self->stopping_);
  LOG_INFO("received %s, %s", strsignal(signum),
           graceful ? "draining in-flight requests" : "stopping now");
  self->shutdown(graceful);
}

namespace {

// The pid file `sluice -s` reads. Refuses to overwrite the file of a process that still runs.
bool writePidFile(const std::string& path, std::string* err) {
  if (FILE* f = fopen(path.c_str(), "r")) {
    long pid = 0;
    bool have = fscanf(f, "%ld", &pid) == 1;
    fclose(f);
    if (have && pid > 0 && pid != getpid() && kill(static_cast<pid_t>(pid), 0) == 0) {
      *err = "pid file " + path + " names running process " + std::to_string(pid) + " (is another sluice running?)";
      return false;
    }
  }
  std::string tmp = path + ".tmp";
  FILE* f = fopen(tmp.c_str(), "w");
  if (!f || fprintf(f, "%ld\n", static_cast<long>(getpid())) < 0 || fclose(f) != 0 ||
      rename(tmp.c_str(), path.c_str()) != 0) {
    *err = "cannot write pid file " + path + ": " + strerror(errno);
    return false;
  }
  return true;
}

bool sameListeners(const Config& a, const Config& b) {
  if (a.listeners.size() != b.listeners.size()) return false;
  for (size_t i = 0; i < a.listeners.size(); i++) {
    const auto& x = a.listeners[i];
    const auto& y = b.listeners[i];
    if (x.host != y.host || x.port != y.port || x.proxy_protocol != y.proxy_protocol) return false;
  }
  return true;
}

}  // namespace

bool Server::reload(std::string* message) {
  if (stopping_) {
    *message = "shutting down";
    return false;
  }
  auto result = loadConfigFile(config_->source_path);
  if (!result.ok()) {
    std::string all;
    for (const auto& e : result.errors) all += e.format() + "\n";
    if (all.empty()) all = config_->source_path + ": invalid configuration\n";
    all.pop_back();
    *message = all;
    last_reload_ = "failed: " + all;
    reloads_failed_++;
    LOG_ERROR("reload failed, still serving generation %llu:\n%s",
              static_cast<unsigned long long>(generation_->id), all.c_str());
    return false;
  }
  const Config& next = *result.config;
  // Sockets and threads are set up once per process; changing them needs a restart.
  std::string restart;
  if (!sameListeners(*config_, next)) restart = "listeners";
  else if (next.workers != config_->workers) restart = "workers";
  else if (next.admin.host != config_->admin.host || next.admin.port != config_->admin.port ||
           next.admin.enabled != config_->admin.enabled)
    restart = "admin.address";
  std::string log_err;
  if (restart.empty() && next.access_log.target != config_->access_log.target) {
    // Prove the new access log opens here, as startup does, before any worker drops the old one.
    int fd = openAccessLogTarget(next.access_log.target, &log_err);
    if (fd > 2) ::close(fd);
    if (fd >= 0 || next.access_log.target == "off") log_err.clear();
  }
  if (!log_err.empty()) {
    *message = config_->source_path + ": " + log_err + " (nothing was reloaded)";
    last_reload_ = "failed: " + *message;
    reloads_failed_++;
    LOG_ERROR("reload failed: %s", message->c_str());
    return false;
  }
  if (!restart.empty()) {
    *message = config_->source_path + ": " + restart + " changed; that needs a restart (nothing was reloaded)";
    last_reload_ = "failed: " + *message;
    reloads_failed_++;
    LOG_ERROR("reload refused: %s", message->c_str());
    return false;
  }
  auto luaHash = [](const Config& c) -> uint64_t { return c.lua ? c.lua->hash : 0; };
  // Byte-identical YAML is not enough: a GeoIP database or list file replaced in place of the
  // old one (same path) is a change too.
  if (next.hash == config_->hash && next.inputs_stamp == config_->inputs_stamp &&
      luaHash(next) == luaHash(*config_)) {
    *message = "configuration unchanged (generation " + std::to_string(generation_->id) + ")";
    last_reload_ = "ok: " + *message;
    reloads_ok_++;
    return true;
  }
  auto gen = std::make_shared<Generation>(result.config, generation_.get(), metrics_);
  // Two-phase commit: every worker prepares (pools, its Lua VM with init_worker) on its own
  // thread; any failure or a worker too slow to answer aborts everywhere and the running
  // generation keeps serving. The control loop carries no client traffic, so it can wait.
  struct Round {
    std::mutex mu;
    std::condition_variable cv;
    size_t pending = 0;
    std::vector<std::string> errors;
  };
  auto round = std::make_shared<Round>();
  round->pending = workers_.size();
  for (auto& w : workers_) {
    w->post([w = w.get(), gen, round] {
      std::string err;
      bool ok = w->prepareGeneration(gen, &err);
      std::lock_guard<std::mutex> lock(round->mu);
      if (!ok) round->errors.push_back(err);
      if (--round->pending == 0) round->cv.notify_all();
    });
  }
  Nanos prepare_timeout = next.lua ? next.lua->prepare_timeout : 5 * kSeconds;
  std::vector<std::string> prepare_errors;
  {
    std::unique_lock<std::mutex> lock(round->mu);
    if (!round->cv.wait_for(lock, std::chrono::nanoseconds(prepare_timeout),
                            [&] { return round->pending == 0; }))
      round->errors.push_back("a worker did not finish preparing within " +
                              std::to_string(prepare_timeout / kMillis) + " ms");
    prepare_errors = round->errors;
  }
  if (!prepare_errors.empty()) {
    for (auto& w : workers_) w->post([w = w.get(), gen] { w->abortGeneration(gen); });
    std::string all;
    for (const auto& e : prepare_errors) all += (all.empty() ? "" : "\n") + e;
    *message = all + "\n(nothing was reloaded)";
    last_reload_ = "failed: " + *message;
    reloads_failed_++;
    LOG_ERROR("reload aborted, still serving generation %llu:\n%s",
              static_cast<unsigned long long>(generation_->id), all.c_str());
    return false;
  }
  health_->stop();
  health_ = std::make_unique<HealthChecker>(control_->loop(), gen->clusters);
  health_->start();
  LogLevel level;
  if (log::parseLevel(next.log_level, &level)) log::setLevel(level);
  applyOpenFilesLimit(next.max_open_files);
  config_ = result.config;
  generation_ = gen;
  for (auto& w : workers_) w->post([w = w.get(), gen] { w->commitGeneration(gen); });
  control_->swapGeneration(gen);
  RiskSync::configure(control_->loop(), next);
  watcher_->configure(next);
  *message = "generation " + std::to_string(gen->id) + " live (config " + next.hash.substr(0, 12) + ")";
  last_reload_ = "ok: " + *message;
  reloads_ok_++;
  LOG_INFO("reload: %s", message->c_str());
  return true;
}

std::vector<LuaWorkerStats> Server::luaStats() const {
  std::vector<LuaWorkerStats> out;
  for (const auto& w : workers_)
    if (w->lua()) out.push_back(w->lua()->stats());
  return out;
}

namespace {
std::string jsonEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (c == '\n') o += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) o += ' ';
    else o += c;
  }
  return o;
}
}  // namespace

std::string Server::luaStatusJson() const {
  const auto& lua = generation_->config->lua;
  std::string j = "{\"enabled\":";
  j += lua ? "true" : "false";
  j += ",\"generation\":" + std::to_string(generation_->id);
  if (lua) {
    char h[32];
    snprintf(h, sizeof(h), "%016llx", static_cast<unsigned long long>(lua->hash));
    j += ",\"bundle_hash\":\"" + std::string(h) + "\",\"policies_dir\":\"" +
         jsonEscape(lua->policies_dir) + "\"";
  }
  auto stats = luaStats();
  size_t mem = 0, retired = 0, retired_mem = 0;
  uint64_t cancelled = 0;
  struct Agg {
    lua::PolicyInfo info;
    uint64_t errors = 0;
    int overruns = 0;
    int disabled = 0;
  };
  std::map<std::string, Agg> pol;
  j += ",\"workers\":[";
  for (size_t i = 0; i < stats.size(); i++) {
    const auto& s = stats[i];
    mem += s.memory_bytes;
    retired += s.retired_vms;
    retired_mem += s.retired_memory_bytes;
    cancelled += s.requests_cancelled;
    if (i) j += ",";
    j += "{\"generation\":" + std::to_string(s.generation) + ",\"memory_bytes\":" +
         std::to_string(s.memory_bytes) + ",\"retired_vms\":" + std::to_string(s.retired_vms) + "}";
    for (const auto& p : s.policies) {
      auto& a = pol[p.name];
      a.info = p;
      a.errors += p.errors;
      a.overruns += p.overruns;
      a.disabled += p.disabled ? 1 : 0;
    }
  }
  j += "],\"memory_bytes\":" + std::to_string(mem) + ",\"retired_vms\":" + std::to_string(retired) +
       ",\"retired_memory_bytes\":" + std::to_string(retired_mem) +
       ",\"requests_cancelled_on_retire\":" + std::to_string(cancelled) + ",\"policies\":[";
  bool first = true;
  for (const auto& [name, a] : pol) {
    if (!first) j += ",";
    first = false;
    j += "{\"name\":\"" + jsonEscape(name) + "\",\"version\":\"" + jsonEscape(a.info.version) +
         "\",\"file\":\"" + jsonEscape(a.info.file) + "\",\"priority\":" +
         std::to_string(a.info.priority) + ",\"errors\":" + std::to_string(a.errors) +
         ",\"overruns\":" + std::to_string(a.overruns) + ",\"disabled_workers\":" +
         std::to_string(a.disabled) + "}";
  }
  j += "],\"aggregate_routes\":[";
  if (lua)
    for (size_t i = 0; i < lua->aggregate_routes.size(); i++)
      j += (i ? ",\"" : "\"") + jsonEscape(lua->aggregate_routes[i]) + "\"";
  j += "],\"last_reload\":\"" + jsonEscape(last_reload_) + "\"}";
  return j;
}

void Server::shutdown(bool graceful) {
  stopping_ = true;
  for (auto& w : workers_) w->stop(graceful);
  control_->stop(graceful);
}

}  // namespace sluice
