#include "proxy/server/worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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
  uv_loop_close(&loop_);
  for (auto& s : sockets_)
    if (s.fd >= 0) ::close(s.fd);
}

void Worker::setGeneration(GenerationPtr gen) {
  if (gen->metrics_owner && !control_) {
    accepted_counter_ = gen->metrics_owner->connectionsAccepted(ProxyMetrics::shardOf(id_));
    open_gauge_ = gen->metrics_owner->connectionsOpen(ProxyMetrics::shardOf(id_));
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
    uv_tcp_init(&loop_, &l->tcp);
    l->tcp.data = l.get();
    int rc = uv_tcp_open(&l->tcp, s.fd);
    if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&l->tcp), s.config.backlog, onConnection);
    if (rc != 0) {
      LOG_ERROR("worker %d: listen on %s:%u failed: %s", id_, s.config.host.c_str(), s.config.port,
                uv_strerror(rc));
      uv_close(reinterpret_cast<uv_handle_t*>(&l->tcp), nullptr);
      listeners_.push_back(std::move(l));  // freed with the worker, after the close completes
      continue;
    }
    s.fd = -1;  // owned by libuv now
    listeners_.push_back(std::move(l));
  }
  uv_run(&loop_, UV_RUN_DEFAULT);
}

void Worker::onConnection(uv_stream_t* server, int status) {
  auto* l = static_cast<Listener*>(server->data);
  Worker* w = l->worker;
  if (status != 0) {
    LOG_WARN("worker %d: accept error: %s", w->id_, uv_strerror(status));
    return;
  }
  if (w->draining_) return;
  auto* c = new ClientConnection(w, l->config, l->admin);
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(c->tcp())) != 0) {
    c->forceClose();
    return;
  }
  c->start();
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
  for (auto& l : listeners_)
    if (!uv_is_closing(reinterpret_cast<uv_handle_t*>(&l->tcp)))
      uv_close(reinterpret_cast<uv_handle_t*>(&l->tcp), nullptr);
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
  maybeFinish();
}

void Worker::maybeFinish() {
  if (!draining_ || finished_ || !connections_.empty()) return;
  finished_ = true;
  uv_timer_stop(&drain_timer_);
  uv_close(reinterpret_cast<uv_handle_t*>(&drain_timer_), nullptr);
  {
    std::lock_guard<std::mutex> lock(posted_mu_);
    async_closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&async_), nullptr);
  }
  if (current_)
    for (auto& p : current_->pools) p->closeIdle();
  if (access_log_) access_log_->stop();
  if (decision_log_) decision_log_->stop();
  if (lua_) lua_->close();
  if (on_shutdown) on_shutdown();
}

}  // namespace sluice
