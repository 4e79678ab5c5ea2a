#include "proxy/server/server.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "proxy/server/worker.h"
#include "proxy/upstream/health_checker.h"

namespace sluice {

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
  generation_ = std::make_shared<Generation>(config_);
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
  uv_signal_t* sigs[] = {&sigterm_, &sigquit_, &sigint_};
  int nums[] = {SIGTERM, SIGQUIT, SIGINT};
  for (int i = 0; i < 3; i++) {
    uv_signal_init(loop, sigs[i]);
    sigs[i]->data = this;
    uv_signal_start(sigs[i], onSignal, nums[i]);
  }
  control_->on_shutdown = [this] {
    health_->stop();
    uv_close(reinterpret_cast<uv_handle_t*>(&sigterm_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigquit_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&sigint_), nullptr);
  };

  for (auto& w : workers_) w->start();
  for (const auto& l : cfg.listeners)
    LOG_INFO("sluice %s listening on %s:%u (%d workers)", SLUICE_VERSION, l.host.c_str(), l.port,
             cfg.workers);
  if (cfg.admin.enabled)
    LOG_INFO("admin listening on %s:%u", cfg.admin.host.c_str(), cfg.admin.port);

  control_->runHere();
  for (auto& w : workers_) w->join();
  LOG_INFO("sluice stopped");
  workers_.clear();
  control_.reset();
  return 0;
}

void Server::onSignal(uv_signal_t* s, int signum) {
  auto* self = static_cast<Server*>(s->data);
  // A second Ctrl-C means "now": skip the drain.
  bool graceful = !(signum == SIGINT && self->stopping_);
  LOG_INFO("received %s, %s", strsignal(signum),
           graceful ? "draining in-flight requests" : "stopping now");
  self->shutdown(graceful);
}

void Server::shutdown(bool graceful) {
  stopping_ = true;
  for (auto& w : workers_) w->stop(graceful);
  control_->stop(graceful);
}

}  // namespace sluice
