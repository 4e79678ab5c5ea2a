#pragma once
// A worker: one thread, one uv_loop, its own SO_REUSEPORT listening sockets, its own upstream
// connection pools and access-log buffer. The control worker runs on the main thread: signals,
// the admin listener and active health checks, never client traffic.
#include <uv.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <memory>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "proxy/log/access_log.h"
#include "proxy/server/generation.h"
#include "proxy/server/lua_phase.h"
#include "proxy/server/write_batch.h"

namespace sluice {

class ClientConnection;
class Server;

struct BoundSocket {
  int fd = -1;
  ListenerConfig config;
  bool admin = false;
};

// Creates, binds (SO_REUSEPORT) and returns a listening-ready socket; the worker calls listen.
int bindListener(const std::string& host, uint16_t port, bool reuseport, std::string* err);

class Worker {
 public:
  Worker(Server* server, int id, bool control);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Must be called before start()/runHere(): takes ownership of the bound sockets.
  void addListener(BoundSocket sock) { sockets_.push_back(std::move(sock)); }
  void setGeneration(GenerationPtr gen);
  // On this worker's thread: new requests use `gen`; requests in flight keep theirs. The old
  // pools retire (idle upstream connections close, busy ones close when their request ends).
  void swapGeneration(GenerationPtr gen);
  // Reload's two-phase commit, each on this worker's thread: prepare builds everything that can
  // fail (pools, the Lua VM with init_worker) and keeps it aside; commit swaps it in between
  // events (cannot fail); abort drops it. False + *err when prepare failed.
  bool prepareGeneration(const GenerationPtr& gen, std::string* err);
  void commitGeneration(const GenerationPtr& gen);
  void abortGeneration(const GenerationPtr& gen);
  LuaWorkerRuntime* lua() { return lua_.get(); }
  bool setupAccessLog(const std::string& target, std::string* err);
  // SIGUSR1 (logrotate): close and reopen the access log file. On this worker's thread.
  void reopenAccessLog();

  void start();    // data workers: runs the loop on a new thread
  void runHere();  // control worker: runs the loop on the calling thread
  void join();
  // Thread-safe. Graceful: stop accepting, finish in-flight requests within drain_timeout.
  void stop(bool graceful);
  // Thread-safe: run `fn` on this worker's loop.
  void post(std::function<void()> fn);

  int id() const { return id_; }
  bool isControl() const { return control_; }
  uv_loop_t* loop() { return &loop_; }
  const WorkerGenerationPtr& current() const { return current_; }
  AccessLog* accessLog() { return access_log_.get(); }
  AccessLog* decisionLog() { return decision_log_.get(); }
  bool setupDecisionLog(const std::string& target, std::string* err);
  Server* server() { return server_; }
  bool draining() const { return draining_; }
  size_t connectionCount() const { return connections_.size(); }
  uint64_t requestsServed() const { return requests_served_.load(std::memory_order_relaxed); }
  void countRequest() { requests_served_.fetch_add(1, std::memory_order_relaxed); }

  void onConnectionOpened(ClientConnection* c) {
    connections_.insert(c);
    if (open_gauge_.bound()) open_gauge_.inc(), accepted_counter_.inc();
  }
  void onConnectionClosed(ClientConnection* c);
  // Client connections this worker holds before it stops accepting (client.max_connections,
  // "auto" resolved against the open-file limit when the generation was committed).
  size_t maxConnections() const { return max_connections_; }
  bool acceptPaused() const { return accept_paused_; }

  // Hook for the control worker's own handles (signals, health checks) to close at shutdown.
  std::function<void()> on_shutdown;

 private:
  // Accepting is ours, not uv_listen's: libuv's EMFILE handling accepts and drops what waits in
  // the backlog, and once its reserve fd is lost (taken by another thread) it calls back with
  // EMFILE in a tight loop. A poll handle can simply stop, leaving connections in the backlog.
  struct Listener {
    uv_poll_t poll;
    int fd = -1;
    bool polling = false;
    bool closed = false;
    Worker* worker = nullptr;
    ListenerConfig config;
    bool admin = false;
  };
  enum class PauseReason { kMaxConnections, kFdLimit };
  // What one round of accept() on a listener ended with.
  enum class AcceptResult { kEmpty, kBatchDone, kPaused };
  static void onAcceptable(uv_poll_t* p, int status, int events);
  static void onAcceptTimer(uv_timer_t* t);
  AcceptResult acceptFrom(Listener* l);
  void pauseAccepting(PauseReason reason, int err);
  void resumeAccepting();
  void setListening(bool on);
  void resolveMaxConnections();
  static void onAsync(uv_async_t* a);
  static void onDrainTimer(uv_timer_t* t);
  void run();
  void beginDrain(bool graceful);
  void maybeFinish();

  Server* server_;
  int id_;
  bool control_;
  uv_loop_t loop_;
  uv_async_t async_;
  uv_timer_t drain_timer_;
  uv_timer_t accept_timer_;  // retries accept() while paused on the fd limit; 0 ms after a close
  std::thread thread_;
  std::vector<BoundSocket> sockets_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::unique_ptr<LuaWorkerRuntime> lua_;  // before current_: VMs call it when destroyed
  std::unique_ptr<WriteBatch> write_batch_;  // created on the loop's thread by run()
  WorkerGenerationPtr current_;
  WorkerGenerationPtr prepared_;  // between prepareGeneration and commit/abort
  std::unique_ptr<AccessLog> access_log_;
  std::unique_ptr<AccessLog> decision_log_;  // sampled decision lines (log.decisions)
  std::unordered_set<ClientConnection*> connections_;
  std::mutex posted_mu_;
  std::vector<std::function<void()>> posted_;
  bool draining_ = false;
  bool finished_ = false;
  bool async_closed_ = false;  // guarded by posted_mu_
  size_t max_connections_ = SIZE_MAX;
  bool accept_paused_ = false;   // listeners not polled right now
  bool pause_episode_ = false;   // paused since the backlog was last seen empty (logged once)
  uint64_t pause_started_ms_ = 0;
  std::atomic<uint64_t> requests_served_{0};
  // Client connection metrics (data workers only: admin connections are not proxy traffic).
  CounterShard accepted_counter_;
  GaugeShard open_gauge_;
  CounterShard paused_max_connections_;  // sluice_accept_paused_total{reason="max_connections"}
  CounterShard paused_fd_limit_;         // sluice_accept_paused_total{reason="fd_limit"}
};

}  // namespace sluice
