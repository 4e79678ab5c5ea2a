#include "core/redis/client.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <bit>
#include <charconv>
#include <deque>
#include <map>
#include <unordered_map>

#include "core/random.h"
#include "core/redis/libuv_adapter.h"
#include "core/redis/slot.h"

namespace sluice::redis {
namespace {

Nanos nowNanos() { return static_cast<Nanos>(uv_hrtime()); }

// A uv_timer_t on the heap: closing a handle is asynchronous, so the handle outlives its owner
// and frees itself in the close callback; clearing `data` first means it can never call back.
class LoopTimer {
 public:
  LoopTimer(uv_loop_t* loop, std::function<void()> fn) : fn_(std::move(fn)) {
    timer_ = new uv_timer_t;
    uv_timer_init(loop, timer_);
    timer_->data = this;
  }
  ~LoopTimer() {
    timer_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
  }
  LoopTimer(const LoopTimer&) = delete;
  LoopTimer& operator=(const LoopTimer&) = delete;

  void start(Nanos after) {
    uint64_t ms = after <= 0 ? 0 : static_cast<uint64_t>((after + kMillis - 1) / kMillis);
    uv_timer_start(timer_, &LoopTimer::onTimer, ms, 0);
  }
  void stop() { uv_timer_stop(timer_); }
  bool active() const { return uv_is_active(reinterpret_cast<const uv_handle_t*>(timer_)) != 0; }

 private:
  static void onTimer(uv_timer_t* t) {
    if (auto* self = static_cast<LoopTimer*>(t->data)) self->fn_();
  }
  uv_timer_t* timer_;
  std::function<void()> fn_;
};

}  // namespace

const char* RedisClientOptions::validate() const {
  if (endpoints.empty()) return "redis: no endpoints";
  for (const auto& e : endpoints) {
    if (e.host.empty() || e.port == 0) return "redis: endpoint needs a host and a port";
  }
  if (commandTimeout <= 0 || connectTimeout <= 0) return "redis: timeouts must be positive";
  if (backoffBase <= 0 || backoffMax < backoffBase) return "redis: backoff needs 0 < base <= max";
  if (cluster && database != 0) return "redis: Redis Cluster has only database 0";
  if (database < 0) return "redis: database must be >= 0";
  if (slotRefreshInterval <= 0 || slotRefreshMinGap <= 0) return "redis: slot refresh intervals must be positive";
  return nullptr;
}

RedisCommand RedisCommand::of(std::vector<std::string> args) {
  RedisCommand c;
  c.keyIndex = args.size() > 1 ? 1 : -1;
  c.args = std::move(args);
  return c;
}

RedisCommand RedisCommand::keyless(std::vector<std::string> args) {
  RedisCommand c;
  c.args = std::move(args);
  return c;
}

RedisCommand RedisCommand::ofScript(const RedisScriptPtr& script, std::vector<std::string> keys,
                                    std::vector<std::string> argv) {
  RedisCommand c;
  c.script = script;
  c.args.reserve(3 + keys.size() + argv.size());
  c.args.emplace_back("EVALSHA");
  c.args.push_back(script->sha1());
  c.args.push_back(std::to_string(keys.size()));
  for (auto& k : keys) c.args.push_back(std::move(k));
  for (auto& a : argv) c.args.push_back(std::move(a));
  c.keyIndex = keys.empty() ? -1 : 3;
  return c;
}

// ---------------------------------------------------------------------------------------------

namespace {

struct Node;

struct Cmd {
  RedisCommand cmd;
  int slot = -1;
  uint32_t redirects = 0;
  bool done = false;
  bool evalFallback = false;
  Node* node = nullptr;  // where it waits or was sent last
};

struct Batch;
using BatchPtr = std::shared_ptr<Batch>;

struct Batch {
  std::vector<Cmd> cmds;
  std::vector<RedisResult> results;
  size_t remaining = 0;
  RedisBatchCallback cb;
  Nanos start = 0;
  Nanos deadline = 0;
  std::multimap<Nanos, BatchPtr>::iterator deadlineIt;
  bool inDeadlines = false;
  bool done = false;
  bool inSubmit = false;  // a completion during submit is deferred: callbacks never run inside a call
  bool internal = false;  // the client's own CLUSTER SLOTS: kept out of the stats
  Node* forced = nullptr;
};

// hiredis privdata of one command on the wire. hiredis calls every callback exactly once (with
// the reply, or with NULL when the connection goes), so this is freed there; `batch->done` tells
// a late reply (after a timeout) from a live one.
struct Attempt {
  BatchPtr batch;
  uint32_t index;
  Node* node;
};

struct Waiting {
  BatchPtr batch;
  uint32_t index;
  bool asking;
};

enum class NodeState : uint8_t { kIdle, kConnecting, kReady, kBackoff };

struct Node {
  Node(RedisClient::Impl* c, std::string h, uint16_t p, size_t idx, uint32_t failures, Nanos cooldown)
      : client(c), host(std::move(h)), port(p), name(host + ":" + std::to_string(port)), index(idx),
        breaker(failures, cooldown) {}
  RedisClient::Impl* client;
  std::string host;
  uint16_t port;
  std::string name;
  size_t index;
  redisAsyncContext* ac = nullptr;
  NodeState state = NodeState::kIdle;
  std::deque<Waiting> waiting;
  uint32_t failedConnects = 0;
  bool everConnected = false;
  int handshakePending = 0;
  RedisBreaker breaker;
  std::unique_ptr<LoopTimer> timer;  // connect timeout, then reconnect backoff
};

}  // namespace

class RedisClient::Impl {
 public:
  Impl(uv_loop_t* loop, RedisClientOptions options)
      : loop_(loop), options_(std::move(options)), alive_(std::make_shared<char>(0)) {
    deferTimer_ = std::make_unique<LoopTimer>(loop_, [this] { runDeferred(); });
    deadlineTimer_ = std::make_unique<LoopTimer>(loop_, [this] { onDeadline(); });
    refreshTimer_ = std::make_unique<LoopTimer>(loop_, [this] { doRefresh(); });
    slots_.assign(kClusterSlots, -1);
    for (const auto& e : options_.endpoints) {
      Node* n = nodeFor(e.host, e.port);
      if (!options_.cluster) break;  // standalone: the first endpoint is the server
      (void)n;
    }
    if (options_.cluster) {
      doRefresh();
    } else {
      nodes_[0]->timer->stop();
      connect(nodes_[0].get());
    }
  }

  ~Impl() {
    closing_ = true;
    alive_.reset();
    // Completed calls whose callbacks were deferred to the next loop turn fire now.
    auto deferred = std::move(deferred_);
    for (auto& b : deferred) fire(b);
    // Every call still pending: "client closed", exactly once.
    while (!deadlines_.empty()) {
      BatchPtr b = deadlines_.begin()->second;
      deadlines_.erase(deadlines_.begin());
      b->inDeadlines = false;
      for (uint32_t i = 0; i < b->cmds.size() && !b->done; i++) {
        if (!b->cmds[i].done) complete(b, i, failed(RedisStatus::kClosed, "client destroyed"));
      }
    }
    // hiredis answers its in-flight callbacks with NULL; their batches are all done by now.
    for (auto& n : nodes_) {
      if (n->ac != nullptr) {
        redisAsyncContext* ac = n->ac;
        n->ac = nullptr;
        ac->data = nullptr;
        redisAsyncFree(ac);
      }
    }
  }

  // --- submission ----------------------------------------------------------------------------

  void submit(std::vector<RedisCommand> cmds, RedisBatchCallback cb, Nanos timeout, bool internal,
              Node* forced) {
    auto b = std::make_shared<Batch>();
    b->cb = std::move(cb);
    b->internal = internal;
    b->forced = forced;
    b->start = nowNanos();
    b->deadline = b->start + (timeout > 0 ? timeout : options_.commandTimeout);
    b->remaining = cmds.size();
    b->results.resize(cmds.size());
    b->cmds.resize(cmds.size());
    for (size_t i = 0; i < cmds.size(); i++) b->cmds[i].cmd = std::move(cmds[i]);
    if (!internal) {
      stats_.batches++;
      stats_.commands += cmds.size();
    }
    if (closing_) {
      // Only reachable from a callback fired by the destructor.
      for (uint32_t i = 0; i < b->cmds.size(); i++) complete(b, i, failed(RedisStatus::kClosed, "client destroyed"));
      if (b->cmds.empty()) fire(b);
      return;
    }
    b->inSubmit = true;
    if (b->cmds.empty()) {
      finish(b);
      b->inSubmit = false;
      return;
    }
    b->deadlineIt = deadlines_.emplace(b->deadline, b);
    b->inDeadlines = true;
    for (uint32_t i = 0; i < b->cmds.size() && !b->done; i++) {
      Cmd& c = b->cmds[i];
      if (c.cmd.args.empty()) {
        complete(b, i, failed(RedisStatus::kBadRequest, "empty command"));
        continue;
      }
      if (options_.cluster && c.cmd.keyIndex >= 0 && static_cast<size_t>(c.cmd.keyIndex) < c.cmd.args.size()) {
        c.slot = keySlot(c.cmd.args[c.cmd.keyIndex]);
        if (c.cmd.script && !sameSlot(c)) {
          complete(b, i, failed(RedisStatus::kCrossSlot, "script keys must share a hash tag"));
          continue;
        }
      }
      dispatch(b, i, b->forced, false);
    }
    b->inSubmit = false;
    if (!b->done && b->deadlineIt == deadlines_.begin()) armDeadline();
  }

  // --- accessors -----------------------------------------------------------------------------

  const RedisClientStats& stats() const { return stats_; }

  RedisBreakerState breakerState() const {
    Nanos now = nowNanos();
    RedisBreakerState worst = RedisBreakerState::kClosed;
    for (const auto& n : nodes_) {
      RedisBreakerState s = n->breaker.state(now);
      if (s == RedisBreakerState::kOpen) return s;
      if (s == RedisBreakerState::kHalfOpen) worst = s;
    }
    return worst;
  }
  size_t openBreakers() const {
    Nanos now = nowNanos();
    size_t k = 0;
    for (const auto& n : nodes_) k += n->breaker.state(now) != RedisBreakerState::kClosed;
    return k;
  }
  size_t nodeCount() const { return nodes_.size(); }
  size_t connectedNodes() const {
    size_t k = 0;
    for (const auto& n : nodes_) k += n->state == NodeState::kReady;
    return k;
  }
  std::string slotOwner(uint16_t slot) const {
    int idx = slots_[slot & (kClusterSlots - 1)];
    return idx < 0 ? std::string() : nodes_[idx]->name;
  }
  void refreshSlots() {
    if (options_.cluster && !refreshInFlight_) doRefresh();
  }
  const std::string& lastError() const { return lastError_; }

  // --- hiredis callbacks (static trampolines) -------------------------------------------------

  static void onReplyStatic(redisAsyncContext*, void* r, void* privdata) {
    std::unique_ptr<Attempt> a(static_cast<Attempt*>(privdata));
    if (a->batch->done) return;  // timed out (or the client closed): the late reply is dropped
    a->node->client->onReply(*a, static_cast<redisReply*>(r));
  }

  static void onHandshakeStatic(redisAsyncContext* ac, void* r, void*) {
    auto* n = static_cast<Node*>(ac->data);
    if (n == nullptr || n->ac != ac || r == nullptr) return;  // torn down; onDisconnect reports it
    n->client->onHandshake(n, static_cast<redisReply*>(r));
  }

  static void onConnectStatic(const redisAsyncContext* ac, int status) {
    auto* n = static_cast<Node*>(ac->data);
    if (n == nullptr || n->ac != ac) return;
    if (status != REDIS_OK) {
      n->ac = nullptr;  // hiredis frees the context after this callback
      n->client->connectFailed(n, ac->errstr[0] ? ac->errstr : "connect failed");
      return;
    }
    if (n->handshakePending == 0) n->client->becomeReady(n);
  }

  static void onDisconnectStatic(const redisAsyncContext* ac, int status) {
    auto* n = static_cast<Node*>(ac->data);
    if (n == nullptr || n->ac != ac) return;
    n->ac = nullptr;  // hiredis frees the context after this callback
    n->client->connectionDown(n, ac->errstr[0] ? ac->errstr : "connection closed");
  }

 private:
  static RedisResult failed(RedisStatus s, std::string detail) {
    RedisResult r;
    r.status = s;
    r.detail = std::move(detail);
    return r;
  }

  bool sameSlot(const Cmd& c) const {
    int64_t numkeys = 0;
    const std::string& nk = c.cmd.args[2];
    std::from_chars(nk.data(), nk.data() + nk.size(), numkeys);
    for (int64_t k = 1; k < numkeys && static_cast<size_t>(3 + k) < c.cmd.args.size(); k++) {
      if (keySlot(c.cmd.args[3 + k]) != c.slot) return false;
    }
    return true;
  }

  // --- routing and sending -------------------------------------------------------------------

  Node* route(const Cmd& c) {
    if (!options_.cluster) return nodes_[0].get();
    if (c.slot < 0) {
      for (auto& n : nodes_) {
        if (n->state == NodeState::kReady) return n.get();
      }
      return nodes_[0].get();
    }
    int idx = slots_[c.slot];
    return idx < 0 ? nullptr : nodes_[idx].get();
  }

  void dispatch(const BatchPtr& b, uint32_t i, Node* forced, bool asking) {
    Cmd& c = b->cmds[i];
    Node* n = forced != nullptr ? forced : route(c);
    if (n == nullptr) {  // cluster slot not mapped yet: wait for CLUSTER SLOTS (or the deadline)
      c.node = nullptr;
      unrouted_.push_back({b, i, false});
      requestRefresh();
      return;
    }
    c.node = n;
    if (!n->breaker.allow(nowNanos())) {
      if (!b->internal) stats_.breakerRejections++;
      complete(b, i, failed(RedisStatus::kBreakerOpen, n->name));
      return;
    }
    if (n->state != NodeState::kReady) {
      if (n->waiting.size() >= options_.maxQueuedPerNode) {
        complete(b, i, failed(RedisStatus::kBadRequest, "queue for " + n->name + " is full"));
        return;
      }
      n->waiting.push_back({b, i, asking});
      return;
    }
    sendNow(n, b, i, asking);
  }

  void sendNow(Node* n, const BatchPtr& b, uint32_t i, bool asking) {
    Cmd& c = b->cmds[i];
    const auto& args = c.cmd.args;
    argv_.clear();
    lens_.clear();
    for (const auto& a : args) {
      argv_.push_back(a.data());
      lens_.push_back(a.size());
    }
    if (asking) {
      static const char* kAsking = "ASKING";
      static const size_t kAskingLen = 6;
      redisAsyncCommandArgv(n->ac, nullptr, nullptr, 1, &kAsking, &kAskingLen);
    }
    auto* a = new Attempt{b, i, n};
    if (redisAsyncCommandArgv(n->ac, &Impl::onReplyStatic, a, static_cast<int>(args.size()),
                              argv_.data(), lens_.data()) != REDIS_OK) {
      // The context is going down (we are inside its error path): wait for the reconnect.
      delete a;
      n->waiting.push_back({b, i, asking});
    }
  }

  void flushWaiting(Node* n) {
    std::deque<Waiting> q;
    q.swap(n->waiting);
    for (auto& w : q) {
      if (w.batch->done || w.batch->cmds[w.index].done) continue;
      if (n->state == NodeState::kReady) {
        sendNow(n, w.batch, w.index, w.asking);
      } else {
        n->waiting.push_back(std::move(w));
      }
    }
  }

  // --- replies -------------------------------------------------------------------------------

  void onReply(Attempt& a, redisReply* r) {
    const BatchPtr& b = a.batch;
    Cmd& c = b->cmds[a.index];
    Node* n = a.node;
    if (r == nullptr) {
      // Counted once for the breaker by connectionDown (or by whoever dropped the connection),
      // not once per pipelined command: one dead socket is one failure.
      if (!b->internal) stats_.connectionLost++;
      complete(b, a.index, failed(RedisStatus::kConnectionLost, "connection to " + n->name + " lost"));
      return;
    }
    n->breaker.onSuccess();
    if (r->type == REDIS_REPLY_ERROR && r->str != nullptr) {
      std::string_view err(r->str, r->len);
      if (options_.cluster && (err.starts_with("MOVED ") || err.starts_with("ASK "))) {
        redirect(b, a.index, err);
        return;
      }
      if (c.cmd.script && !c.evalFallback && err.starts_with("NOSCRIPT")) {
        // The server lost the script (restart, SCRIPT FLUSH, failover): EVAL loads it again.
        c.evalFallback = true;
        c.cmd.args[0] = "EVAL";
        c.cmd.args[1] = c.cmd.script->body();
        stats_.noscript++;
        dispatch(b, a.index, n, false);
        return;
      }
    }
    RedisResult res;
    res.reply = RedisReply::fromHiredis(r);
    complete(b, a.index, std::move(res));
  }

  void redirect(const BatchPtr& b, uint32_t i, std::string_view err) {
    Cmd& c = b->cmds[i];
    bool moved = err.starts_with("MOVED ");
    // "MOVED <slot> <host>:<port>" / "ASK <slot> <host>:<port>"
    size_t sp1 = err.find(' ');
    size_t sp2 = err.find(' ', sp1 + 1);
    size_t colon = err.rfind(':');
    int64_t slot = -1;
    uint32_t port = 0;
    if (sp2 != std::string_view::npos && colon != std::string_view::npos && colon > sp2) {
      std::from_chars(err.data() + sp1 + 1, err.data() + sp2, slot);
      std::from_chars(err.data() + colon + 1, err.data() + err.size(), port);
    }
    if (slot < 0 || slot >= kClusterSlots || port == 0 || port > 65535) {
      complete(b, i, failed(RedisStatus::kTooManyRedirects, "unparseable redirect: " + std::string(err)));
      return;
    }
    if (++c.redirects > options_.maxRedirects) {
      complete(b, i, failed(RedisStatus::kTooManyRedirects, std::string(err)));
      return;
    }
    std::string host(err.substr(sp2 + 1, colon - sp2 - 1));
    if (host.empty() && c.node != nullptr) host = c.node->host;  // "MOVED 1 :7001": same host
    Node* target = nodeFor(host, static_cast<uint16_t>(port));
    if (moved) {
      stats_.moved++;
      slots_[slot] = static_cast<int>(target->index);
      requestRefresh();  // one MOVED usually means a resharding: learn the rest of the map too
      dispatch(b, i, target, false);
    } else {
      stats_.ask++;
      dispatch(b, i, target, true);  // ASK is for this command only: the map stays
    }
  }

  void complete(const BatchPtr& b, uint32_t i, RedisResult res) {
    Cmd& c = b->cmds[i];
    if (c.done || b->done) return;
    c.done = true;
    if (!b->internal) {
      if (res.ok()) {
        stats_.replies++;
        if (res.reply.isError()) stats_.errorReplies++;
      } else if (res.status == RedisStatus::kTimeout) {
        stats_.timeouts++;
      }
    }
    b->results[i] = std::move(res);
    if (--b->remaining == 0) finish(b);
  }

  void finish(BatchPtr b) {
    b->done = true;
    if (b->inDeadlines) {
      deadlines_.erase(b->deadlineIt);
      b->inDeadlines = false;
    }
    if (!b->internal) recordLatency(*b);
    if (b->inSubmit && !closing_) {
      deferred_.push_back(std::move(b));
      deferTimer_->start(0);
      return;
    }
    fire(b);  // last: the callback may destroy the client
  }

  static void fire(const BatchPtr& b) {
    RedisBatchCallback cb = std::move(b->cb);
    if (cb) cb(b->results);
  }

  void recordLatency(const Batch& b) {
    bool any = false;
    for (const auto& r : b.results) any |= r.ok();
    if (!any) return;
    uint64_t us = static_cast<uint64_t>((nowNanos() - b.start) / 1000);
    size_t bucket = std::min<size_t>(std::bit_width(us), RedisClientStats::kLatencyBuckets - 1);
    stats_.latencyBuckets[bucket]++;
    stats_.latencyCount++;
    stats_.latencySumMicros += us;
  }

  void runDeferred() {
    std::weak_ptr<char> guard = alive_;
    auto list = std::move(deferred_);
    deferred_.clear();
    for (auto& b : list) {
      fire(b);
      if (guard.expired()) return;
    }
  }

  // --- deadlines -----------------------------------------------------------------------------

  void armDeadline() {
    if (deadlines_.empty()) {
      deadlineTimer_->stop();
      return;
    }
    deadlineTimer_->start(deadlines_.begin()->first - nowNanos());
  }

  void onDeadline() {
    Nanos now = nowNanos();
    std::vector<BatchPtr> expired;
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      BatchPtr b = deadlines_.begin()->second;
      deadlines_.erase(deadlines_.begin());
      b->inDeadlines = false;
      expired.push_back(std::move(b));
    }
    std::weak_ptr<char> guard = alive_;
    for (auto& b : expired) {
      // Waiting for a connection or for a reply both say the node is not answering: one failure
      // per node per call (a pipelined batch of 100 is one slow call, not 100).
      std::vector<Node*> late;
      for (const Cmd& c : b->cmds) {
        if (!c.done && c.node != nullptr && std::find(late.begin(), late.end(), c.node) == late.end()) {
          late.push_back(c.node);
        }
      }
      std::vector<Node*> opened;
      for (Node* n : late) {
        if (n->breaker.onFailure(now)) opened.push_back(n);
      }
      // The callback first (it gets kTimeout, not the kConnectionLost a dropped connection gives).
      for (uint32_t i = 0; i < b->cmds.size() && !b->done; i++) {
        if (!b->cmds[i].done) {
          complete(b, i, failed(RedisStatus::kTimeout, b->cmds[i].node ? b->cmds[i].node->name : "no route"));
          if (guard.expired()) return;
        }
      }
      for (Node* n : opened) {
        onBreakerOpen(n, true);
        if (guard.expired()) return;
      }
    }
    armDeadline();
  }

  // --- connections ---------------------------------------------------------------------------

  Node* nodeFor(const std::string& host, uint16_t port) {
    std::string name = host + ":" + std::to_string(port);
    auto it = nodeIndex_.find(name);
    if (it != nodeIndex_.end()) return nodes_[it->second].get();
    size_t idx = nodes_.size();
    auto node = std::make_unique<Node>(this, host, port, idx, options_.breakerFailures, options_.breakerCooldown);
    Node* n = node.get();
    n->timer = std::make_unique<LoopTimer>(loop_, [this, n] { onNodeTimer(n); });
    nodes_.push_back(std::move(node));
    nodeIndex_.emplace(std::move(name), idx);
    // One connection per master, opened before the first call, from a timer: connect() may
    // fail synchronously, and the caller may be in the middle of routing a command.
    n->state = NodeState::kBackoff;
    n->timer->start(0);
    return n;
  }

  void connect(Node* n) {
    if (closing_) return;
    n->state = NodeState::kConnecting;
    n->handshakePending = 0;
    redisAsyncContext* ac = redisAsyncConnect(n->host.c_str(), n->port);
    if (ac == nullptr || ac->err) {
      std::string why = ac ? ac->errstr : "out of memory";
      if (ac) redisAsyncFree(ac);
      connectFailed(n, why);
      return;
    }
    if (detail::libuvAttach(ac, loop_) != REDIS_OK) {
      redisAsyncFree(ac);
      connectFailed(n, "libuv attach failed");
      return;
    }
    limitReplySizes(ac->c.reader);
    ac->data = n;
    n->ac = ac;
    redisAsyncSetConnectCallback(ac, &Impl::onConnectStatic);
    redisAsyncSetDisconnectCallback(ac, &Impl::onDisconnectStatic);
    // hiredis 0.14 notices a finished connect only on a write event, and asks for one only when
    // a command is queued: without a handshake command the connect callback would never fire.
    ac->ev.addWrite(ac->ev.data);
    // AUTH and SELECT go out pipelined right behind the TCP handshake; commands wait in
    // n->waiting until both are answered, so none can run unauthenticated or in the wrong db.
    if (!options_.password.empty()) {
      detail::sendAuth(ac, options_.username, options_.password, &Impl::onHandshakeStatic);
      n->handshakePending++;
    }
    if (!options_.cluster && options_.database != 0) {
      std::string db = std::to_string(options_.database);
      const char* argv[2] = {"SELECT", db.c_str()};
      size_t lens[2] = {6, db.size()};
      redisAsyncCommandArgv(ac, &Impl::onHandshakeStatic, nullptr, 2, argv, lens);
      n->handshakePending++;
    }
    n->timer->start(options_.connectTimeout);
  }

  void onHandshake(Node* n, redisReply* r) {
    if (r->type == REDIS_REPLY_ERROR) {
      std::string why = "handshake: " + std::string(r->str, r->len);
      dropConnection(n);
      connectFailed(n, why);
      return;
    }
    if (--n->handshakePending == 0 && (n->ac->c.flags & REDIS_CONNECTED)) becomeReady(n);
  }

  void becomeReady(Node* n) {
    n->state = NodeState::kReady;
    n->timer->stop();
    n->failedConnects = 0;
    stats_.connects++;
    if (n->everConnected) stats_.reconnects++;
    n->everConnected = true;
    flushWaiting(n);
  }

  void onNodeTimer(Node* n) {
    if (n->state == NodeState::kConnecting) {  // connect + handshake took too long
      dropConnection(n);
      connectFailed(n, "connect timeout");
    } else if (n->state == NodeState::kBackoff) {
      connect(n);
    }
  }

  // Frees the context now; hiredis answers its in-flight commands with NULL (connection lost).
  void dropConnection(Node* n) {
    if (n->ac == nullptr) return;
    redisAsyncContext* ac = n->ac;
    n->ac = nullptr;
    n->state = NodeState::kBackoff;
    ac->data = nullptr;
    redisAsyncFree(ac);  // deferred by hiredis when called from inside one of its callbacks
  }

  void connectFailed(Node* n, const std::string& why) {
    n->state = NodeState::kBackoff;
    lastError_ = n->name + ": " + why;
    stats_.connectFailures++;
    std::weak_ptr<char> guard = alive_;
    if (n->breaker.onFailure(nowNanos())) {
      onBreakerOpen(n, false);
      if (guard.expired()) return;
    }
    scheduleReconnect(n);
  }

  void connectionDown(Node* n, const std::string& why) {
    if (n->state != NodeState::kReady) {
      connectFailed(n, why);
      return;
    }
    n->state = NodeState::kBackoff;
    lastError_ = n->name + ": " + why;
    stats_.disconnects++;
    if (options_.cluster) requestRefresh();  // a master went away: failover may have moved slots
    std::weak_ptr<char> guard = alive_;
    if (n->breaker.onFailure(nowNanos())) {
      onBreakerOpen(n, false);
      if (guard.expired()) return;
    }
    scheduleReconnect(n);
  }

  // Exponential backoff with full jitter (random in [0, min(max, base * 2^n)]): many workers
  // and instances losing the same Redis at once spread their reconnects instead of stampeding.
  void scheduleReconnect(Node* n) {
    if (closing_) return;
    uint32_t exp = std::min<uint32_t>(n->failedConnects, 20);
    n->failedConnects++;
    Nanos cap = std::min<Nanos>(options_.backoffMax, options_.backoffBase << exp);
    Nanos delay = static_cast<Nanos>(fastRandom() % static_cast<uint64_t>(cap + 1));
    n->state = NodeState::kBackoff;
    n->timer->start(delay);
  }

  void onBreakerOpen(Node* n, bool stalled) {
    stats_.breakerTrips++;
    // A connection whose commands time out is stalled (or the server hangs): drop it, the
    // reconnect will find out. Late replies on it are discarded either way.
    std::weak_ptr<char> guard = alive_;
    if (stalled && n->state == NodeState::kReady) {
      dropConnection(n);
      if (guard.expired()) return;
      scheduleReconnect(n);
    }
    std::deque<Waiting> q;
    q.swap(n->waiting);
    for (auto& w : q) {
      if (w.batch->done || w.batch->cmds[w.index].done) continue;
      if (!w.batch->internal) stats_.breakerRejections++;
      complete(w.batch, w.index, failed(RedisStatus::kBreakerOpen, n->name));
      if (guard.expired()) return;
    }
  }

  // --- cluster slot map ----------------------------------------------------------------------

  void requestRefresh() {
    if (!options_.cluster || closing_) return;
    if (refreshInFlight_) {
      refreshAgain_ = true;
      return;
    }
    Nanos wait = lastRefresh_ + options_.slotRefreshMinGap - nowNanos();
    if (wait > 0) {
      refreshTimer_->start(wait);
      return;
    }
    doRefresh();
  }

  void doRefresh() {
    if (closing_ || refreshInFlight_) return;
    refreshInFlight_ = true;
    refreshAgain_ = false;
    lastRefresh_ = nowNanos();
    // Ask a connected node if there is one, rotating so one bad node cannot pin the map.
    Node* target = nullptr;
    for (size_t k = 0; k < nodes_.size() && target == nullptr; k++) {
      Node* n = nodes_[(refreshCursor_ + k) % nodes_.size()].get();
      if (n->state == NodeState::kReady) target = n;
    }
    if (target == nullptr) target = nodes_[refreshCursor_ % nodes_.size()].get();
    refreshCursor_++;
    std::vector<RedisCommand> cmds;
    cmds.push_back(RedisCommand::keyless({"CLUSTER", "SLOTS"}));
    submit(std::move(cmds), [this](std::vector<RedisResult>& rs) { onSlots(rs[0]); },
           std::max(options_.commandTimeout, options_.connectTimeout), true, target);
  }

  void onSlots(RedisResult& r) {
    refreshInFlight_ = false;
    if (closing_) return;
    bool applied = r.ok() && r.reply.isArray() && applySlots(r.reply);
    if (!applied) lastError_ = "CLUSTER SLOTS failed: " + (r.ok() ? r.reply.debugString() : r.detail);
    refreshTimer_->start(applied && !refreshAgain_ ? options_.slotRefreshInterval
                                                   : std::max<Nanos>(options_.slotRefreshMinGap, 50 * kMillis));
    if (!applied) return;
    std::weak_ptr<char> guard = alive_;
    std::vector<Waiting> q;
    q.swap(unrouted_);
    for (auto& w : q) {
      if (w.batch->done || w.batch->cmds[w.index].done) continue;
      dispatch(w.batch, w.index, nullptr, false);
      if (guard.expired()) return;
    }
  }

  bool applySlots(const RedisReply& reply) {
    std::vector<int> slots(kClusterSlots, -1);
    for (const auto& range : reply.elements) {
      int64_t lo = 0, hi = 0, port = 0;
      if (!range.elementInteger(0, &lo) || !range.elementInteger(1, &hi) || range.elements.size() < 3) return false;
      const RedisReply& master = range.elements[2];
      if (!master.isArray() || master.elements.size() < 2 || !master.elementInteger(1, &port)) return false;
      if (lo < 0 || hi >= kClusterSlots || lo > hi || port <= 0 || port > 65535) return false;
      std::string host = master.elements[0].str;
      if (host.empty()) host = options_.endpoints[0].host;  // "" = the address we asked through
      Node* n = nodeFor(host, static_cast<uint16_t>(port));
      for (int64_t s = lo; s <= hi; s++) slots[s] = static_cast<int>(n->index);
    }
    slots_ = std::move(slots);
    stats_.slotRefreshes++;
    return true;
  }

  uv_loop_t* loop_;
  const RedisClientOptions options_;
  std::shared_ptr<char> alive_;  // expires when the client is destroyed (checked after callbacks)
  bool closing_ = false;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unordered_map<std::string, size_t> nodeIndex_;
  std::vector<int> slots_;  // cluster: slot -> index in nodes_, -1 unknown
  std::vector<Waiting> unrouted_;
  std::multimap<Nanos, BatchPtr> deadlines_;  // every pending call, by deadline
  std::vector<BatchPtr> deferred_;
  std::unique_ptr<LoopTimer> deferTimer_;
  std::unique_ptr<LoopTimer> deadlineTimer_;
  std::unique_ptr<LoopTimer> refreshTimer_;
  bool refreshInFlight_ = false;
  bool refreshAgain_ = false;
  Nanos lastRefresh_ = 0;
  size_t refreshCursor_ = 0;
  RedisClientStats stats_;
  std::string lastError_;
  std::vector<const char*> argv_;
  std::vector<size_t> lens_;
};

// ---------------------------------------------------------------------------------------------

RedisClientPtr RedisClient::create(uv_loop_t* loop, RedisClientOptions options) {
  return RedisClientPtr(new RedisClient(std::make_unique<Impl>(loop, std::move(options))));
}

RedisClient::RedisClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RedisClient::~RedisClient() = default;

void RedisClient::command(RedisCommand cmd, RedisCallback cb, Nanos timeout) {
  std::vector<RedisCommand> cmds;
  cmds.push_back(std::move(cmd));
  impl_->submit(std::move(cmds), [cb = std::move(cb)](std::vector<RedisResult>& rs) { cb(rs[0]); },
                timeout, false, nullptr);
}

void RedisClient::batch(std::vector<RedisCommand> cmds, RedisBatchCallback cb, Nanos timeout) {
  impl_->submit(std::move(cmds), std::move(cb), timeout, false, nullptr);
}

const RedisClientStats& RedisClient::stats() const { return impl_->stats(); }
RedisBreakerState RedisClient::breakerState() const { return impl_->breakerState(); }
size_t RedisClient::openBreakers() const { return impl_->openBreakers(); }
size_t RedisClient::nodeCount() const { return impl_->nodeCount(); }
size_t RedisClient::connectedNodes() const { return impl_->connectedNodes(); }
std::string RedisClient::slotOwner(uint16_t slot) const { return impl_->slotOwner(slot); }
void RedisClient::refreshSlots() { impl_->refreshSlots(); }
std::string RedisClient::lastError() const { return impl_->lastError(); }

}  // namespace sluice::redis
