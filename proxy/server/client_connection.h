#pragma once
// A client (downstream) connection and the exchange in progress on it. Requests on one
// connection are handled one at a time: pipelined requests wait, parsed-ahead bytes bounded,
// so responses always leave in request order.
#include <uv.h>

#include <memory>
#include <string>

#include "core/error.h"
#include "core/ip.h"
#include "limiter/admission.h"
#include "limiter/circuit_breaker.h"
#include "proxy/cache/micro_cache.h"
#include "proxy/http/http_parser.h"
#include "proxy/server/generation.h"
#include "proxy/server/lazy_timer.h"
#include "proxy/server/lua_phase.h"
#include "proxy/server/phases.h"
#include "proxy/server/risk_phase.h"
#include "proxy/server/write_batch.h"
#include "proxy/upstream/upstream_connection.h"

namespace sluice {

class Worker;
class UpstreamPool;

// What a local handler (admin API, direct routes, errors) answers.
struct LocalResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// One request/response exchange. Identify results are computed once here and read by every
// later phase.
struct Exchange {
  WorkerGenerationPtr gen;
  Phase phase = Phase::kRead;
  Nanos start_ns = 0;
  Nanos head_ns = 0;  // when the request head was complete (limits, hot items)
  int64_t start_wall_us = 0;
  std::string request_id;
  bool request_id_generated = false;
  std::string traceparent;
  bool traceparent_generated = false;
  IpAddress client_ip;
  std::string client_ip_str;
  int route = -1;
  UpstreamPool* pool = nullptr;
  int server = -1;
  uint64_t tried = 0;  // bitmask of servers tried
  bool body_pending_head = false;  // an upstream is attached but the request head is not out yet
  bool headers_filtered = false;
  bool logged = false;
  int attempts = 0;
  bool retrying = false;  // holds a retry-budget token
  bool counted_active = false;
  bool is_head = false;
  bool upgrade = false;
  bool expect_continue = false;
  bool request_chunked = false;
  bool request_has_body = false;
  bool request_complete = false;     // whole request read from the client
  bool request_body_sent_all = false;
  std::string body_buffer;           // body bytes not yet handed to an upstream connection
  std::string retained_body;         // copy of what was sent, for a retry
  bool body_retained = true;         // false once the body outgrew what a retry can replay
  bool response_started = false;     // response head written to the client
  bool response_complete = false;
  bool chunked_out = false;
  // Lua response filters (LuaPhase::filters): body_filter runs on this streamed body; the
  // response has no body (HEAD, 204, 304: body_filter still sees one eof); filters were turned
  // off after a body_filter failure so the 500 that replaces the response cannot fail too.
  bool lua_body_filter = false;
  bool response_no_body = false;
  bool lua_filters_off = false;
  bool client_keep_alive = true;
  int status = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  std::string upstream_addr;
  Nanos upstream_start_ns = 0;
  Nanos upstream_ns = -1;
  Error error;
  // Limit phase: the admission holds concurrency slots until the exchange ends (declared after
  // `gen`, so it is destroyed first: the limiters it points into outlive it).
  limiter::Admission admission;
  // Circuit breakers the request passed: their outcome is reported when it is logged.
  static constexpr int kMaxBreakers = 4;
  limiter::BreakerPermit breakers[kMaxBreakers];
  int breaker_count = 0;
  PoolGate::Admission pool_admission;  // the upstream pool's slots (max_active, adaptive)
  // Micro-cache (docs/caching.md).
  cache::CacheKey cache_key;
  bool cache_keyed = false;               // cache_key is built for this request
  cache::RequestDecision cache_request;
  cache::FlightLease cache_lease;         // leader: ends the flight once the response is known
  cache::WaitTicket cache_ticket;         // waiter: its place in the leader's flight
  std::shared_ptr<struct CacheWait> cache_wait;
  const char* cache_status = nullptr;     // the X-Cache value, null when the route does not cache
  bool cache_waiting = false;
  bool cache_capture = false;             // collecting the upstream response to store it
  bool cache_too_big = false;
  int cache_code = 0;
  HeaderMap cache_headers;
  std::string cache_body;
  uint64_t item_hash = 0;  // hash64 of the hot-item source's value (0: none)
  bool item_hot = false;   // the sketch marked it hot when this request was recorded
  bool item_looked_up = false;
  std::string_view item_value;  // the hot-item source's value (a view into the request head)
  bool delayed = false;
  std::string decisions;  // JSON members for the access log ("limit":{...})
  // Feature units' per-request state (risk_phase.cc, lua_phase.cc); pointers so this header
  // needs only their declarations. The risk states are immortal constants (no reference count:
  // a shared_ptr copy was a locked increment and decrement on a line every worker shares).
  const RiskExchangeState* risk = nullptr;
  // What the risk unit tells policies (sluice.risk.score, var.fingerprint): the score, -1 until
  // the risk phase scored the request; this request's own points (no carry-over), Lua's adds
  // after the decision (for the access log); the header-order fingerprint once computed.
  int16_t risk_score = -1;
  int16_t risk_request_score = 0;
  std::string risk_added;
  bool fingerprint_set = false;
  char fingerprint[34] = {};
  std::shared_ptr<LuaExchangeState> lua;
  std::shared_ptr<struct ClusterExchangeState> cluster;  // proxy/cluster/cluster_limits.cc

  void endCacheWait();
  Exchange() = default;
  Exchange(Exchange&&) = default;
  Exchange& operator=(Exchange&&) = default;
  // A waiter's posted result must never reach a connection that is gone.
  ~Exchange() { endCacheWait(); }

  // Back to a fresh exchange, keeping the strings' capacity: a keep-alive connection then
  // serves request after request without allocating.
  void recycle() {
    cache_body.clear();
    admission = limiter::Admission();  // slots back before `gen` (and its limiters) may go
    for (auto& b : breakers) b = limiter::BreakerPermit();
    pool_admission = PoolGate::Admission();
    endCacheWait();
    cache_lease = cache::FlightLease();  // a flight never ended here fails: waiters go upstream
    std::string* keep[] = {&request_id, &traceparent, &client_ip_str, &body_buffer, &retained_body,
                           &upstream_addr, &decisions};
    std::string saved[7];
    for (int i = 0; i < 7; i++) saved[i] = std::move(*keep[i]);
    *this = Exchange();
    for (int i = 0; i < 7; i++) {
      saved[i].clear();
      *keep[i] = std::move(saved[i]);
    }
  }
};

// A coalesced waiter's link back to its connection. The leader's thread calls onFilled, which
// only posts to the waiter's worker; the posted handler runs on the connection's loop and finds
// `conn` null if the exchange stopped waiting meanwhile.
struct CacheWait final : cache::CacheWaiter {
  class Worker* worker = nullptr;
  class ClientConnection* conn = nullptr;  // touched on the connection's loop only
  std::weak_ptr<CacheWait> self;
  void onFilled(const cache::FillResult& result) override;
};

class ClientConnection : private HttpParserDelegate, private UpstreamHandler, private BatchedWriter {
 public:
  friend struct CacheWait;
  friend class RiskPhase;
  friend class LuaPhase;
  friend class ClusterPhase;
  ClientConnection(Worker* worker, const ListenerConfig& listener, bool admin);
  ~ClientConnection() override;
  uv_tcp_t* tcp() { return &tcp_; }
  void start();
  // Drain: close now if idle, else after the current response.
  void drain();
  void forceClose() { closeNow(); }

 private:
  enum class TimerKind { kNone, kHeader, kBody, kKeepAlive, kSend, kDelay, kCacheWait };

  static void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void onWrite(uv_write_t* req, int status);
  static void onTimer(void* owner);
  static void onClose(uv_handle_t* h);
  uv_handle_t* tcpHandle() { return reinterpret_cast<uv_handle_t*>(&tcp_); }
  static void onShutdown(uv_shutdown_t* req, int status);

  // Input.
  void handleInput(const char* p, size_t n);
  void parseInput(const char* p, size_t n);
  void drivePending();
  void handleEof(ssize_t status);
  void pauseReading();
  void resumeReading();

  // HttpParserDelegate.
  int onMessageBegin() override;
  int onHeadersComplete() override;
  int onBody(const char* p, size_t n) override;
  int onMessageComplete() override;

  // Phases.
  int identify();
  // Lua rewrite (may suspend: resumeAfterRewrite goes on), then the limit phase and the rest.
  int rewriteThenLimit(const RouteConfig& route);
  int limitThenLater(const RouteConfig& route);
  // A suspended Lua rewrite phase goes on with the limit phase (called by LuaPhase).
  void resumeAfterRewrite();
  // 0: go on; 1: answered locally (rejected/degraded); 2: delayed (a timer resumes it);
  // 3: waiting on Redis (cluster exact mode; resumeAfterLimit runs the phase again).
  int limitPhase(const RouteConfig& route);
  // The rest of the request head's handling after the limit phase's outcome.
  int afterLimit(int limited);
  void resumeAfterLimit();
  // The sale gate (ClusterPhase) took its unit: on to the content phase.
  void resumeAfterSaleGate();
  LocalResponse limitResponse(const LimitRuleConfig& rc, Nanos retry_after, const limiter::RateDecision* d);
  void noteDecision(const LimitRuleConfig& rc, const char* action);
  void recordHotItem();
  bool admitToPool(const RouteConfig& route);
  // Risk, then Lua access, then content: after the limit phase (or its delay).
  void runLaterPhases();
  // A suspended Lua access phase goes on with the content phase (called by LuaPhase).
  void resumeAfterAccess();
  // Content phase, micro-cache: true when the request was answered (hit, stale) or waits for a
  // coalesced response; false to go upstream (as the flight's leader when the lease is active).
  bool cacheLookup(const RouteConfig& route);
  void proceedUpstream();
  void onCacheFilled(const cache::FillResult& result);
  bool buildCacheKey(const RouteConfig& route);
  // The route's last good response within max_age (-1: its stale window); true if served.
  bool serveStale(Nanos max_age);
  void serveCached(const cache::CachedResponse& r, const char* how);
  bool serveStaleInsteadOf(int status);
  // Shared by every local answer (errors, limits, cache): abandon an open upstream exchange;
  // write the request id header; end the head (Connection), write the body and finish.
  void dropUpstream();
  void appendRequestIdHeader();
  void endLocalResponse(bool http10, std::string_view body);
  // Lua response filters: the route's filter bits (0 almost always: one byte read).
  uint8_t luaFilters() const { return ex_->route >= 0 && !admin_ ? LuaPhase::filters(*ex_) : 0; }
  // A whole-body response (local answer, cache hit) through the filters: body_filter runs once
  // over the whole body with eof = true, so the Content-Length is the filtered length.
  void sendWholeFiltered(int status, HeaderMap& headers, std::string_view body, bool http10,
                         uint8_t filters);
  // A streamed body chunk through body_filter, then framed; false when the response was cut.
  bool writeFilteredBody(std::string_view chunk, bool eof);
  void finishCacheFlight();
  void releaseBreakers();
  void reportBreakers(Nanos latency);
  void startContent();
  void connectUpstream();
  void sendRequestHead();
  void forwardBody(const char* p, size_t n);
  void retryOrFail(const Error& err);
  void respondLocal(const LocalResponse& r, bool close_after);
  void respondError(int status, const std::string& reason, bool close_after);
  void finishResponse();
  void finishExchange();
  void logExchange();
  void releaseUpstream(bool reusable);

  // UpstreamHandler.
  void onUpstreamConnected() override;
  void onUpstreamInterim(const HttpMessageHead& head) override;
  void onUpstreamHeaders(HttpMessageHead& head) override;
  void onUpstreamBody(const char* p, size_t n) override;
  void onUpstreamComplete() override;
  void onUpstreamTunnelData(const char* p, size_t n) override;
  void onUpstreamTunnelClosed() override;
  void onUpstreamError(const Error& err) override;
  void onUpstreamDrained() override;
  void onUpstreamReadDone() override;

  // Output. flush() leaves a small out_ for the end of the loop turn (WriteBatch), so one turn's
  // responses wake the client once; a large one (a streamed body) is written at once, which
  // keeps the write queue the measure of backpressure. flushNow() writes at once, for output
  // that must leave before a close.
  void flush();
  void flushNow() override;
  size_t writeQueueSize() const;
  void armTimer(TimerKind kind, Nanos timeout);
  void closeNow();
  void closeAfterWrite();
  void forceCloseHandles();
  const ClientConfig& clientConfig() const;

  Worker* worker_;
  ListenerConfig listener_;
  bool admin_;
  uv_tcp_t tcp_;
  LazyTimer timer_;
  TimerKind timer_kind_ = TimerKind::kNone;
  int handles_open_ = 0;
  HttpParser parser_;
  IpAddress peer_ip_;
  std::string peer_ip_str_;
  bool proxy_header_pending_ = false;
  std::string pending_;  // bytes read but not parsed yet (pipelining, PROXY header)
  bool parser_paused_ = false;
  bool reading_ = false;
  bool read_paused_ = false;
  bool closing_ = false;
  bool close_after_response_ = false;
  bool draining_ = false;
  bool tunnel_ = false;
  bool peer_eof_ = false;
  bool driving_ = false;     // inside drivePending's loop: do not re-enter it
  bool in_parser_ = false;   // inside llhttp_execute: defer what must not happen there
  bool shutting_down_ = false;
  bool handles_closed_ = false;
  uint32_t requests_on_connection_ = 0;
  std::unique_ptr<Exchange> ex_;
  std::unique_ptr<Exchange> spare_;  // the previous exchange, recycled
  UpstreamConnection* upstream_ = nullptr;
  std::string out_;
  std::string filter_buf_;  // body_filter's chunk, capacity kept across chunks
};

}  // namespace sluice
