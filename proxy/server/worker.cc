#include "proxy/server/worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/log.h"
#include "proxy/config/lua_config.h"
#include "proxy/server/client_connection.h"

namespace sluice {

int bindListener(const std::string& host, uint16_t port, bool reuseport, std::string* err) {
  sockaddr_storage ss{};
  socklen_t len;
  std::string h = host;
  if (h.size() > 2 && h.front() == '[') h = h.substr(1, h.size() - 2);
  auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, h.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, h.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    len = sizeof(sockaddr_in6);
  } else {
    *err = "listen address " + host + " is not a numeric IP address";
    return -1;
  }
  int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = std::string("socket: ") + strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // One socket per worker on the same port: the kernel spreads connections across workers
  // without a shared accept lock (libuv 1.44 has no flag for this, hence the raw socket).
  if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    *err = std::string("SO_REUSEPORT: ") + strerror(errno);
    ::close(fd);
    return -1;
  }
  if (ss.ss_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    *err = "bind " + host + ":" + std::to_string(port) + ": " + strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

Worker::Worker(Server* server, int id, bool control) : server_(server), id_(id), control_(control) {
  uv_loop_init(&loop_);
  uv_async_init(&loop_, &async_, onAsync);
  async_.data = this;
  uv_timer_init(&loop_, &drain_timer_);
  drain_timer_.data = this;
  uv_timer_init(&loop_, &accept_timer_);
  accept_timer_.data = this;
  if (!control_) lua_ = std::make_unique<LuaWorkerRuntime>(this, &loop_);
}

Worker::~Worker() {
  join();
  // A worker that never ran (sluice refused to start) still has its handles open: close them as
  // a drain would, or uv_loop_close fails and the loop leaks (found by make test-asan).
  if (!finished_) {
    draining_ = true;
    maybeFinish();
  }
  // Everything was closed by the drain; run once more so close callbacks complete, then free.
  uv_run(&loop_, UV_RUN_NOWAIT);
  prepared_.reset();
  current_.reset();
  access_log_.reset();
  uv_run(&loop_, UV_RUN_NOWAIT);  // close callbacks of VM timers dropped just now
  write_batch_.reset();  // its handles were closed by the drain
  uv_loop_close(&loop_);
  for (auto& s : sockets_)
    if (s.fd >= 0) ::close(s.fd);
  for (auto& l : listeners_)
    if (l->fd >= 0) ::close(l->fd);
}

void Worker::setGeneration(GenerationPtr gen) {
  if (gen->metrics_owner && !control_) {
    accepted_counter_ = gen->metrics_owner->connectionsAccepted(ProxyMetrics::shardOf(id_));
    open_gauge_ = gen->metrics_owner->connectionsOpen(ProxyMetrics::shardOf(id_));
    paused_max_connections_ = gen->metrics_owner->acceptPaused(ProxyMetrics::shardOf(id_), false);
    paused_fd_limit_ = gen->metrics_owner->acceptPaused(ProxyMetrics::shardOf(id_), true);
  }
  // At start, before the thread runs: a VM that cannot be prepared was already refused by
  // validation, so a failure here (e.g. init_worker) is logged and the worker runs without it.
  std::string err;
  if (!prepareGeneration(gen, &err)) {
    LOG_ERROR("worker %d: %s", id_, err.c_str());
    prepared_ = std::make_shared<WorkerGeneration>(gen, &loop_, ProxyMetrics::shardOf(id_));
  }
  current_ = std::move(prepared_);
  if (current_->vm) current_->vm->commit();
  if (lua_) lua_->publish(current_->vm, current_->gen->id);
  resolveMaxConnections();
}

void Worker::resolveMaxConnections() {
  size_t configured = current_->gen->config->client.max_connections;
  if (configured == 0) {
    rlimit rl{};
    getrlimit(RLIMIT_NOFILE, &rl);
    uint64_t files = rl.rlim_cur == RLIM_INFINITY ? (1u << 20) : rl.rlim_cur;
    int workers = std::max(1, current_->gen->config->workers);
    configured = std::max<uint64_t>(16, files * 3 / 4 / static_cast<uint64_t>(workers));
  }
  max_connections_ = configured;
}

bool Worker::prepareGeneration(const GenerationPtr& gen, std::string* err) {
  auto wg = std::make_shared<WorkerGeneration>(gen, &loop_, ProxyMetrics::shardOf(id_));
  const auto& lua = gen->config->lua;
  if (lua && lua_) {
    const auto* cur = current_ ? current_->gen->config->lua.get() : nullptr;
    if (cur && current_->vm && cur->hash == lua->hash) {
      wg->vm = current_->vm;  // unchanged policies and options: keep the running VM
      wg->vm_reused = true;
    } else {
      std::vector<std::string> errors;
      wg->vm = lua::WorkerVm::prepare(lua->bundle, lua->vm, lua_.get(), gen->lua_dicts, &errors);
      if (!wg->vm) {
        *err = "worker " + std::to_string(id_) + ": Lua VM not prepared:";
        for (const auto& e : errors) *err += "\n" + e;
        return false;
      }
    }
  }
  if (wg->vm) {
    for (const auto& r : gen->config->routes) {
      uint8_t m = 0;
      if (wg->vm->routeHasPhase(r.name, lua::Phase::kRewrite)) m |= kLuaRewrite;
      if (wg->vm->routeHasPhase(r.name, lua::Phase::kBalancer)) m |= kLuaBalancer;
      if (wg->vm->routeHasPhase(r.name, lua::Phase::kAccess)) m |= kLuaAccess;
      if (wg->vm->routeHasPhase(r.name, lua::Phase::kAggregate)) m |= kLuaAggregate;
      if (wg->vm->routeHasPhase(r.name, lua::Phase::kLog)) m |= kLuaLog;
      if (wg->vm->routeHasPhase(r.name, lua::Phase::kHeaderFilter)) m |= kLuaHeaderFilter;
      if (wg->vm->routeHasPhase(r.name, lua::Phase::kBodyFilter)) m |= kLuaBodyFilter;
      if (m) m |= kLuaAny;
      wg->lua_route_phases.push_back(m);
      wg->lua_route_chains.push_back(wg->vm->routeChain(r.name));
    }
  }
  prepared_ = std::move(wg);
  return true;
}

void Worker::abortGeneration(const GenerationPtr& gen) {
  if (prepared_ && prepared_->gen == gen) prepared_.reset();
}

void Worker::commitGeneration(const GenerationPtr& gen) {
  if (!prepared_ || prepared_->gen != gen) return;
  auto old = current_;
  current_ = std::move(prepared_);
  if (current_->vm && !current_->vm_reused) current_->vm->commit();
  if (old && old->vm && old->vm != current_->vm && lua_) {
    const auto& ls = current_->gen->config->lua;
    lua_->retireVm(old->vm, ls ? ls->max_generations : 4, ls ? ls->retire_timeout : 60 * kSeconds);
  }
  if (lua_) lua_->publish(current_->vm, current_->gen->id);
  resolveMaxConnections();
  // A higher limit lets waiting connections in now, not at the next close.
  if (accept_paused_ && connections_.size() < max_connections_)
    uv_timer_start(&accept_timer_, onAcceptTimer, 0, 0);
  if (old) {
    for (auto& p : old->pools) p->retire();
    const auto& before = old->gen->config->access_log.target;
    const auto& after = current_->gen->config->access_log.target;
    if (before != after && !control_) {
      std::string err;
      if (access_log_) access_log_->stop();
      if (!setupAccessLog(after, &err)) {
        LOG_ERROR("worker %d: %s; access log off until the next reload", id_, err.c_str());
        setupAccessLog("off", &err);
      }
    }
    const auto& dbefore = old->gen->config->access_log.decisions_target;
    const auto& dafter = current_->gen->config->access_log.decisions_target;
    if (dbefore != dafter && !control_) {
      std::string err;
      if (decision_log_) decision_log_->stop();
      if (!setupDecisionLog(dafter, &err)) {
        LOG_ERROR("worker %d: %s; decision log off until the next reload", id_, err.c_str());
        setupDecisionLog("off", &err);
      }
    }
  }
}

void Worker::swapGeneration(GenerationPtr gen) {
  std::string err;
  if (!prepareGeneration(gen, &err)) {
    LOG_ERROR("worker %d: %s; keeping the running generation", id_, err.c_str());
    return;
  }
  commitGeneration(gen);
}

void Worker::reopenAccessLog() {
  if (control_ || !current_) return;
  const auto& target = current_->gen->config->access_log.target;
  std::string err;
  if (access_log_) access_log_->stop();  // flushes what it holds into the old (renamed) file
  if (!setupAccessLog(target, &err)) {
    LOG_ERROR("worker %d: %s; access log off until the next reopen or reload", id_, err.c_str());
    setupAccessLog("off", &err);
  }
  const auto& dtarget = current_->gen->config->access_log.decisions_target;
  if (decision_log_) decision_log_->stop();
  if (!setupDecisionLog(dtarget, &err)) {
    LOG_ERROR("worker %d: %s; decision log off until the next reopen or reload", id_, err.c_str());
    setupDecisionLog("off", &err);
  }
}

bool Worker::setupDecisionLog(const std::string& target, std::string* err) {
  int fd = openAccessLogTarget(target, err);
  if (fd < 0 && target != "off") return false;
  decision_log_ = std::make_unique<AccessLog>(&loop_, fd);
  return true;
}

bool Worker::setupAccessLog(const std::string& target, std::string* err) {
  int fd = openAccessLogTarget(target, err);
  if (fd < 0 && target != "off") return false;
  access_log_ = std::make_unique<AccessLog>(&loop_, fd);
  return true;
}

void Worker::start() {
  thread_ = std::thread([this] { run(); });
}

void Worker::runHere() { run(); }

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::run() {
  for (auto& s : sockets_) {
    auto l = std::make_unique<Listener>();
    l->worker = this;
    l->config = s.config;
    l->admin = s.admin;
    int rc = ::listen(s.fd, s.config.backlog) == 0 ? 0 : uv_translate_sys_error(errno);
    if (rc == 0) rc = uv_poll_init_socket(&loop_, &l->poll, s.fd);
    if (rc != 0) {
      LOG_ERROR("worker %d: listen on %s:%u failed: %s", id_, s.config.host.c_str(), s.config.port,
                uv_strerror(rc));
      continue;  // the socket closes with the worker (sockets_ keeps it)
    }
    l->poll.data = l.get();
    l->fd = s.fd;
    s.fd = -1;  // the listener owns it now, closed after its poll handle
    listeners_.push_back(std::move(l));
  }
  // Small socket writes, both sides, wait for the end of each loop turn (write_batch.h).
  write_batch_ = std::make_unique<WriteBatch>(&loop_);
  write_batch_->bindToThisThread();
  setListening(true);
  uv_run(&loop_, UV_RUN_DEFAULT);
}

void Worker::setListening(bool on) {
  for (auto& l : listeners_) {
    if (l->closed || l->polling == on) continue;
    if (on) uv_poll_start(&l->poll, UV_READABLE, onAcceptable);
    else uv_poll_stop(&l->poll);
    l->polling = on;
  }
}

void Worker::onAcceptable(uv_poll_t* p, int status, int) {
  auto* l = static_cast<Listener*>(p->data);
  Worker* w = l->worker;
  if (status != 0) {
    LOG_WARN("worker %d: listener %s: %s", w->id_, l->config.name.c_str(), uv_strerror(status));
    return;
  }
  w->acceptFrom(l);
}

Worker::AcceptResult Worker::acceptFrom(Listener* l) {
  // Bounded so one listener under a connection flood cannot starve the loop's other events.
  constexpr int kAcceptBatch = 128;
  for (int i = 0; i < kAcceptBatch; i++) {
    if (draining_ || l->closed) return AcceptResult::kEmpty;
    if (connections_.size() >= max_connections_) {
      pauseAccepting(PauseReason::kMaxConnections, 0);
      return AcceptResult::kPaused;
    }
    int fd = ::accept4(l->fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        if (pause_episode_) {
          LOG_INFO("worker %d: accepting again after %llu ms (%zu connections open)", id_,
                   static_cast<unsigned long long>(uv_now(&loop_) - pause_started_ms_),
                   connections_.size());
          pause_episode_ = false;
        }
        return AcceptResult::kEmpty;
      }
      if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue;  // that one is gone
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        pauseAccepting(PauseReason::kFdLimit, err);
        return AcceptResult::kPaused;
      }
      // Anything else (EPERM from a firewall hook...) concerned the connection just refused.
      LOG_WARN("worker %d: accept on %s: %s", id_, l->config.name.c_str(), strerror(err));
      return AcceptResult::kBatchDone;
    }
    auto* c = new ClientConnection(this, l->config, l->admin);
    if (uv_tcp_open(c->tcp(), fd) != 0) {
      ::close(fd);
      c->forceClose();
      continue;
    }
    c->start();
  }
  return AcceptResult::kBatchDone;
}

void Worker::pauseAccepting(PauseReason reason, int err) {
  bool fds = reason == PauseReason::kFdLimit;
  setListening(false);
  accept_paused_ = true;
  // Out of fds nothing here may close: retry on a timer too (another thread may free some).
  // At max_connections a close of ours is what makes room (onConnectionClosed).
  if (fds) uv_timer_start(&accept_timer_, onAcceptTimer, 100, 0);
  if (pause_episode_) return;  // still the same overload: logged and counted once
  pause_episode_ = true;
  pause_started_ms_ = uv_now(&loop_);
  if (fds) {
    LOG_WARN("worker %d: accept failed (%s) with %zu connections open: not accepting, retrying "
             "every 100 ms and whenever a connection closes; new connections wait in the backlog",
             id_, strerror(err), connections_.size());
  } else {
    LOG_WARN("worker %d: %zu connections open (client.max_connections): not accepting until one "
             "closes; new connections wait in the backlog", id_, connections_.size());
  }
  if (!control_) (fds ? paused_fd_limit_ : paused_max_connections_).inc();
}

void Worker::onAcceptTimer(uv_timer_t* t) { static_cast<Worker*>(t->data)->resumeAccepting(); }

void Worker::resumeAccepting() {
  if (!accept_paused_ || draining_) return;
  if (connections_.size() >= max_connections_) return;  // a close will call again
  accept_paused_ = false;
  uv_timer_stop(&accept_timer_);
  setListening(true);
  // Accept now rather than wait for the poll: an empty backlog ends the episode (and its log),
  // a full fd table pauses again without a second log line.
  for (auto& l : listeners_)
    if (!l->closed && acceptFrom(l.get()) == AcceptResult::kPaused) return;
}

void Worker::post(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(posted_mu_);
  if (async_closed_) return;  // the loop is finishing; nothing left to run it
  posted_.push_back(std::move(fn));
  uv_async_send(&async_);
}

void Worker::stop(bool graceful) {
  post([this, graceful] { beginDrain(graceful); });
}

void Worker::onAsync(uv_async_t* a) {
  auto* w = static_cast<Worker*>(a->data);
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> lock(w->posted_mu_);
    fns.swap(w->posted_);
  }
  for (auto& f : fns) f();
}

void Worker::beginDrain(bool graceful) {
  if (finished_) return;
  if (draining_ && graceful) return;
  draining_ = true;
  // Listener memory stays until the worker is destroyed: libuv touches a handle after uv_close.
  // The poll handle does not own its fd: the close callback closes the socket.
  uv_timer_stop(&accept_timer_);
  for (auto& l : listeners_) {
    if (l->closed) continue;
    l->closed = true;
    l->polling = false;
    uv_close(reinterpret_cast<uv_handle_t*>(&l->poll), [](uv_handle_t* h) {
      auto* closed = static_cast<Listener*>(h->data);
      ::close(closed->fd);
      closed->fd = -1;
    });
  }
  if (current_)
    for (auto& p : current_->pools) p->closeIdle();
  auto conns = connections_;
  for (auto* c : conns) {
    if (graceful) c->drain();
    else c->forceClose();
  }
  if (graceful && !connections_.empty()) {
    Nanos t = current_ ? current_->gen->config->drain_timeout : 0;
    uv_timer_start(&drain_timer_, onDrainTimer, static_cast<uint64_t>(t / kMillis) + 1, 0);
  }
  maybeFinish();
}

void Worker::onDrainTimer(uv_timer_t* t) {
  auto* w = static_cast<Worker*>(t->data);
  LOG_WARN("worker %d: drain timeout, closing %zu connections", w->id_, w->connections_.size());
  auto conns = w->connections_;
  for (auto* c : conns) c->forceClose();
}

void Worker::onConnectionClosed(ClientConnection* c) {
  // Only connections that were opened (a failed accept closes one that never was).
  if (connections_.erase(c) && open_gauge_.bound()) open_gauge_.dec();
  // Paused at the limit: this close made room (and freed an fd). Accept on the next loop turn,
  // not inside the close callback.
  if (accept_paused_ && !draining_ && connections_.size() < max_connections_)
    uv_timer_start(&accept_timer_, onAcceptTimer, 0, 0);
  maybeFinish();
}

void Worker::maybeFinish() {
  if (!draining_ || finished_ || !connections_.empty()) return;
  finished_ = true;
  uv_timer_stop(&drain_timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&drain_timer_), nullptr);
  uv_timer_stop(&accept_timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&accept_timer_), nullptr);
  {
    std::lock_guard<std::mutex> lock(posted_mu_);
    async_closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  }
  if (write_batch_) write_batch_->close();
  if (current_)
    for (auto& p : current_->pools) p->closeIdle();
  if (access_log_) access_log_->stop();
  if (decision_log_) decision_log_->stop();
  if (lua_) lua_->close();
  if (on_shutdown) on_shutdown();
}

}  // namespace sluice
