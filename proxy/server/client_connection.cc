#include "proxy/server/client_connection.h"

#include <charconv>
#include <cmath>
#include <cstring>

#include "core/clock.h"
#include "core/hash.h"
#include "core/log.h"
#include "core/random.h"
#include "core/strings.h"
#include "core/uninit_array.h"
#include "proxy/admin/admin.h"
#include "proxy/cluster/cluster_limits.h"
#include "proxy/http/status.h"
#include "proxy/server/controls.h"
#include "proxy/server/identify.h"
#include "proxy/server/proxy_protocol.h"
#include "proxy/server/read_buffer.h"
#include "proxy/server/stream_writer.h"
#include "proxy/server/worker.h"
#include "proxy/upstream/balance_key.h"
#include "proxy/upstream/upstream_pool.h"

namespace sluice {

namespace {

HttpParserLimits limitsFrom(const ClientConfig& c) {
  return HttpParserLimits{c.max_uri_size, c.max_header_size, c.max_headers};
}

bool isIdempotent(uint8_t method) {
  switch (method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_TRACE:
    case HTTP_PUT:
    case HTTP_DELETE:
      return true;
    default:
      return false;
  }
}

// Hop-by-hop fields (RFC 9110 7.6.1) plus the ones sluice rewrites itself. `Connection` may name
// more; those are removed by removeConnectionListed().
bool isHopByHop(std::string_view name) {
  static const char* const kNames[] = {"connection", "keep-alive",        "proxy-connection",
                                       "te",         "trailer",           "transfer-encoding",
                                       "upgrade",    "proxy-authenticate", "proxy-authorization"};
  for (const char* n : kNames)
    if (equalsIgnoreCase(name, n)) return true;
  return false;
}

void removeConnectionListed(HeaderMap& headers) {
  for (size_t i = 0; i < headers.size(); i++) {
    if (headers.removed(i) || !equalsIgnoreCase(headers.name(i), "connection")) continue;
    std::string_view v = headers.value(i);
    while (!v.empty()) {
      size_t comma = v.find(',');
      std::string_view token = trim(v.substr(0, comma));
      if (!token.empty() && !equalsIgnoreCase(token, "close") &&
          !equalsIgnoreCase(token, "keep-alive") && !equalsIgnoreCase(token, "upgrade"))
        headers.removeAll(token);
      if (comma == std::string_view::npos) break;
      v.remove_prefix(comma + 1);
    }
  }
}

void appendChunkHeader(std::string* out, size_t n) {
  char buf[24];
  auto r = std::to_chars(buf, buf + 20, n, 16);
  *r.ptr++ = '\r';
  *r.ptr++ = '\n';
  out->append(buf, static_cast<size_t>(r.ptr - buf));
}

void appendUint(std::string* out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out->append(buf, static_cast<size_t>(r.ptr - buf));
}

}  // namespace

ClientConnection::ClientConnection(Worker* worker, const ListenerConfig& listener, bool admin)
    : worker_(worker),
      listener_(listener),
      admin_(admin),
      parser_(HTTP_REQUEST, limitsFrom(worker->current()->gen->config->client), this) {
  uv_tcp_init(worker_->loop(), &tcp_);
  timer_.init(worker_->loop(), this, onTimer);
  tcp_.data = this;
  handles_open_ = 2;
}

ClientConnection::~ClientConnection() = default;

const ClientConfig& ClientConnection::clientConfig() const {
  return worker_->current()->gen->config->client;
}

void ClientConnection::start() {
  worker_->onConnectionOpened(this);
  sockaddr_storage ss;
  int len = sizeof(ss);
  if (uv_tcp_getpeername(&tcp_, reinterpret_cast<sockaddr*>(&ss), &len) == 0)
    IpAddress::fromSockaddr(reinterpret_cast<sockaddr*>(&ss), &peer_ip_);
  peer_ip_str_ = peer_ip_.toString();
  if (admin_) {
    const auto& a = worker_->current()->gen->config->admin;
    static Cidr v4loop, v6loop;
    static bool init = (Cidr::parse("127.0.0.0/8", &v4loop), Cidr::parse("::1/128", &v6loop), true);
    (void)init;
    if (!v4loop.contains(peer_ip_) && !v6loop.contains(peer_ip_) && !a.allow.contains(peer_ip_)) {
      LOG_WARN("admin: refused connection from %s", peer_ip_.toString().c_str());
      closeNow();
      return;
    }
  }
  uv_tcp_nodelay(&tcp_, 1);
  proxy_header_pending_ = listener_.proxy_protocol;
  armTimer(TimerKind::kHeader, clientConfig().header_timeout);
  uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), workerReadAlloc, onRead);
  reading_ = true;
}

void ClientConnection::drain() {
  draining_ = true;
  if (closing_) return;
  if (!ex_ && !tunnel_) {
    closeNow();
    return;
  }
  close_after_response_ = true;
}

// ---------------------------------------------------------------------------------------------
// Input

void ClientConnection::onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<ClientConnection*>(s->data);
  if (nread == 0 || self->closing_) return;
  if (nread < 0) {
    self->handleEof(nread);
    return;
  }
  self->handleInput(buf->base, static_cast<size_t>(nread));
  if (self->closing_) return;
  if (self->upstream_) self->upstream_->flush();
  // A request body outrunning its upstream (drivePending resumed): wait for onUpstreamDrained.
  if (self->upstream_ && self->upstream_->writeQueueSize() +
                                (self->ex_ ? self->ex_->body_buffer.size() : 0) >
                            self->clientConfig().buffer_size)
    self->pauseReading();
  self->flush();
}

void ClientConnection::handleInput(const char* p, size_t n) {
  if (tunnel_) {
    if (upstream_) {
      upstream_->out().append(p, n);
      if (upstream_->writeQueueSize() > clientConfig().buffer_size) pauseReading();
    }
    return;
  }
  if (proxy_header_pending_) {
    pending_.append(p, n);
    auto r = parseProxyProtocol(pending_.data(), pending_.size());
    if (r.status == ProxyProtocolResult::Status::kIncomplete) {
      if (pending_.size() > 4096) closeNow();
      return;
    }
    if (r.status == ProxyProtocolResult::Status::kError) {
      LOG_INFO("client %s: %s", peer_ip_.toString().c_str(), r.error);
      closeNow();
      return;
    }
    if (r.has_address) {
      peer_ip_ = r.source;
      peer_ip_str_ = peer_ip_.toString();
    }
    proxy_header_pending_ = false;
    pending_.erase(0, r.consumed);
    drivePending();
    return;
  }
  if (parser_paused_ || !pending_.empty()) {
    pending_.append(p, n);
    if (pending_.size() > clientConfig().buffer_size) pauseReading();
    return;
  }
  driving_ = true;
  parseInput(p, n);
  driving_ = false;
  drivePending();
}

void ClientConnection::drivePending() {
  if (driving_) return;
  driving_ = true;
  while (!closing_ && !parser_paused_ && !tunnel_ && !pending_.empty()) {
    std::string data;
    data.swap(pending_);
    parseInput(data.data(), data.size());
  }
  driving_ = false;
  if (!closing_ && !parser_paused_ && !tunnel_ && pending_.size() <= clientConfig().buffer_size)
    resumeReading();
}

void ClientConnection::parseInput(const char* p, size_t n) {
  in_parser_ = true;
  auto r = parser_.execute(p, n);
  in_parser_ = false;
  if (closing_) return;
  switch (r.status) {
    case HttpParser::Status::kOk:
      break;
    case HttpParser::Status::kPaused:
      // One request at a time: keep what follows until this exchange is over.
      parser_paused_ = true;
      pending_.append(p + r.consumed, n - r.consumed);
      if (pending_.size() > clientConfig().buffer_size) pauseReading();
      break;
    case HttpParser::Status::kUpgrade:
      parser_paused_ = true;
      pending_.append(p + r.consumed, n - r.consumed);  // early tunnel bytes
      break;
    case HttpParser::Status::kError: {
      int status = parser_.errorStatus() ? parser_.errorStatus() : 400;
      if (status >= 500) status = 400;
      respondError(status, parser_.errorReason(), true);
      return;
    }
  }
  if (ex_ && ex_->request_complete && ex_->response_complete) finishExchange();
}

void ClientConnection::handleEof(ssize_t status) {
  peer_eof_ = true;
  reading_ = false;
  if (tunnel_) {
    if (upstream_) {
      upstream_->flush();
      upstream_->shutdownWrite();
    } else {
      closeNow();
    }
    return;
  }
  if (ex_ && status == UV_EOF && ex_->request_complete && !ex_->response_complete) {
    // A half-close after a whole request: answer it, then close.
    close_after_response_ = true;
    return;
  }
  if (ex_ && !ex_->response_complete) {
    ex_->error.source = ErrorSource::kDownstream;
    ex_->error.type = ErrorType::kConnectionReset;
    ex_->error.detail = status == UV_EOF ? "client closed the connection" : uv_strerror(status);
    if (!ex_->response_started) ex_->status = 499;
  }
  closeNow();
}

void ClientConnection::pauseReading() {
  if (reading_ && !read_paused_ && !closing_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
    read_paused_ = true;
  }
}

void ClientConnection::resumeReading() {
  if (read_paused_ && !closing_ && !peer_eof_) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), workerReadAlloc, onRead);
    read_paused_ = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Read + identify phases (parser callbacks)

int ClientConnection::onMessageBegin() {
  if (spare_) ex_ = std::move(spare_);
  else ex_ = std::make_unique<Exchange>();
  ex_->gen = worker_->current();
  // A reload may have changed the client limits since this connection was accepted.
  parser_.setLimits(limitsFrom(ex_->gen->gen->config->client));
  ex_->start_ns = SteadyClock::monotonicNanos();
  ex_->start_wall_us = wallMicros();
  requests_on_connection_++;
  if (timer_kind_ != TimerKind::kHeader)
    armTimer(TimerKind::kHeader, clientConfig().header_timeout);
  return 0;
}

int ClientConnection::onHeadersComplete() {
  auto& h = parser_.head();
  const auto& cfg = *ex_->gen->gen->config;
  ex_->is_head = h.method == HTTP_HEAD;

  if (h.version_major != 1) return parser_.reject(505, "HTTP version not supported");
  int hosts = h.headers.count("host");
  if (hosts > 1) return parser_.reject(400, "more than one Host header");
  if (hosts == 0 && h.version_minor >= 1) return parser_.reject(400, "missing Host header");
  if (h.isHttp10() && h.headers.count("transfer-encoding") > 0)
    return parser_.reject(400, "Transfer-Encoding in an HTTP/1.0 request");
  if (h.method == HTTP_CONNECT) return parser_.reject(405, "CONNECT is not supported");

  ex_->request_chunked = h.chunked;
  ex_->request_has_body = h.chunked || h.content_length > 0;
  ex_->upgrade = h.upgrade;
  ex_->client_keep_alive = h.keep_alive && !draining_ && !close_after_response_ &&
                           requests_on_connection_ < cfg.client.max_requests_per_connection;

  ex_->phase = Phase::kIdentify;
  // One clock reading for the decisions made on the head (hot items, limits, cache).
  ex_->head_ns = SteadyClock::monotonicNanos();
  identify();
  if (closing_) return -1;

  if (admin_) {
    // Admin requests are answered at message end, once their (small) body is read.
    if (h.has_content_length && h.content_length > 1024 * 1024)
      return parser_.reject(413, "admin request body too large");
    armTimer(ex_->request_has_body ? TimerKind::kBody : TimerKind::kNone, cfg.client.body_timeout);
    return 0;
  }

  // The risk unit's own endpoints (/.sluice/pow, /verify) are answered whatever the routes say.
  if (RiskPhase::endpoint(*this) != PhaseResult::kContinue) return closing_ ? -1 : 0;
  if (ex_->route < 0) {
    respondError(404, "no route", false);
    return closing_ ? -1 : 0;
  }
  const auto& route = cfg.routes[ex_->route];
  uint64_t max_body = route.max_body_size ? *route.max_body_size : cfg.client.max_body_size;
  if (max_body > 0 && h.has_content_length && h.content_length > max_body)
    return parser_.reject(413, "request body too large");

  int ui = ex_->gen->gen->route_upstream[ex_->route];
  if (ui >= 0) ex_->pool = ex_->gen->pools[ui].get();
  for (int si : route.degrade_switches) {
    if (!ex_->gen->gen->degrade_switches[si]->load(std::memory_order_relaxed)) continue;
    // An operator switched this feature off: answered here, nothing counted, nothing upstream.
    const auto& sw = cfg.degrade_switches[si];
    if (!ex_->decisions.empty()) ex_->decisions.push_back(',');
    ex_->decisions.append("\"degrade_switch\":\"" + sw.name + "\"");
    if (sw.from_cache && serveStale(-1)) return closing_ ? -1 : 0;
    LocalResponse r;
    r.status = sw.status;
    r.content_type = sw.content_type;
    r.body = sw.body;
    respondLocal(r, false);
    return closing_ ? -1 : 0;
  }
  return rewriteThenLimit(route);
}

int ClientConnection::rewriteThenLimit(const RouteConfig& route) {
  ex_->phase = Phase::kRewrite;
  const PhaseResult rw = LuaPhase::rewrite(*this, route);
  if (closing_) return -1;
  if (rw == PhaseResult::kSuspended) return 0;  // the body is buffered meanwhile
  if (rw == PhaseResult::kAnswered) return 0;
  return limitThenLater(route);
}

int ClientConnection::limitThenLater(const RouteConfig& route) {
  recordHotItem();
  int limited = route.limits.empty() ? 0 : limitPhase(route);
  if (closing_) return -1;
  if (limited == 3) return 0;  // waiting on Redis; the body is buffered meanwhile
  return afterLimit(limited);
}

void ClientConnection::resumeAfterRewrite() {
  if (!ex_ || ex_->response_started || closing_) return;
  limitThenLater(ex_->gen->gen->config->routes[ex_->route]);
  if (upstream_ && !closing_) upstream_->flush();
  if (!closing_) flush();
}

void ClientConnection::resumeAfterLimit() {
  if (!ex_ || ex_->response_started || closing_) return;
  int limited = limitPhase(ex_->gen->gen->config->routes[ex_->route]);
  if (!closing_ && limited != 3) afterLimit(limited);
  if (upstream_ && !closing_) upstream_->flush();
  if (!closing_) flush();
}

int ClientConnection::afterLimit(int limited) {
  if (limited == 1) return 0;  // answered; the rest of the body is read and dropped
  auto& h = parser_.head();
  const auto& cfg = *ex_->gen->gen->config;
  const auto& route = cfg.routes[ex_->route];

  std::string_view expect;
  if (h.headers.get("expect", &expect)) {
    if (!equalsIgnoreCase(trim(expect), "100-continue")) {
      respondError(417, "unsupported Expect", true);
      return -1;
    }
    // We answer 100 ourselves when we start reading the body, and never forward Expect.
    if (ex_->request_has_body && h.version_minor >= 1)
      out_.append("HTTP/1.1 100 Continue\r\n\r\n");
  }

  if (route.direct_status > 0) {
    LocalResponse r;
    r.status = route.direct_status;
    r.body = route.direct_body;
    respondLocal(r, false);
    return closing_ ? -1 : 0;
  }

  if (limited == 2) {
    // Held like nginx's limit_req delay: the body may arrive meanwhile and waits in
    // body_buffer; the delay timer starts the content phase.
    ex_->delayed = true;
    armTimer(TimerKind::kDelay, ex_->admission.delay);
    return 0;
  }
  armTimer(ex_->request_has_body ? TimerKind::kBody : TimerKind::kNone, cfg.client.body_timeout);
  runLaterPhases();
  return closing_ ? -1 : 0;
}

void ClientConnection::runLaterPhases() {
  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  ex_->phase = Phase::kRisk;
  if (RiskPhase::run(*this, route) != PhaseResult::kContinue || closing_) return;
  ex_->phase = Phase::kAccess;
  if (LuaPhase::access(*this, route) != PhaseResult::kContinue || closing_) return;
  if (ClusterPhase::saleGate(*this, route) != PhaseResult::kContinue || closing_) return;
  startContent();
}

void ClientConnection::resumeAfterAccess() {
  if (!ex_ || ex_->response_started || closing_) return;
  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  if (ClusterPhase::saleGate(*this, route) != PhaseResult::kContinue || closing_) {
    if (!closing_) flush();
    return;
  }
  startContent();
  if (upstream_) upstream_->flush();
  flush();
}

void ClientConnection::resumeAfterSaleGate() {
  if (!ex_ || ex_->response_started || closing_) return;
  startContent();
  if (upstream_ && !closing_) upstream_->flush();
  if (!closing_) flush();
}

namespace {

// Retry-After in whole seconds, rounded up, at least 1.
std::string retryAfterSeconds(Nanos ra) {
  return std::to_string(std::max<int64_t>(1, (ra + kSeconds - 1) / kSeconds));
}

}  // namespace

LocalResponse ClientConnection::limitResponse(const LimitRuleConfig& rc, Nanos retry_after,
                                              const limiter::RateDecision* d) {
  LocalResponse r;
  r.status = rc.status;
  r.content_type = rc.content_type;
  switch (rc.action) {
    case LimitAction::kDegrade:
      r.body = rc.body;
      return r;
    case LimitAction::kRedirect:
      r.headers.emplace_back("Location", rc.location);
      r.body = rc.body;
      return r;
    default:
      break;
  }
  if (!rc.body.empty()) {
    r.body = rc.body;
  } else {
    r.body = "{\"error\":\"too many requests\",\"rule\":\"" + rc.id + "\",\"request_id\":\"" +
             ex_->request_id + "\"}\n";
  }
  r.headers.emplace_back("Retry-After", retryAfterSeconds(retry_after));
  if (d && rc.rate_limit_headers != RateLimitHeaders::kOff) {
    // The window of q=limit: a sliding window's own; for a leaky bucket the time its
    // burst + 1 requests take to refill, so q/w is its rate (1r/m burst 2: q=3;w=180).
    double w = rc.algorithm == LimitAlgorithm::kSlidingWindow
                   ? static_cast<double>(rc.window)
                   : static_cast<double>(rc.period) / static_cast<double>(rc.requests) *
                         static_cast<double>(d->limit);
    int64_t window = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(w / static_cast<double>(kSeconds) - 1e-9)));
    int64_t remaining = std::max<int64_t>(0, d->remaining);
    int64_t reset = (d->reset + kSeconds - 1) / kSeconds;
    if (rc.rate_limit_headers == RateLimitHeaders::kDraft) {
      r.headers.emplace_back("RateLimit-Policy", "\"" + rc.id + "\";q=" + std::to_string(d->limit) +
                                                     ";w=" + std::to_string(window));
      r.headers.emplace_back("RateLimit", "\"" + rc.id + "\";r=" + std::to_string(remaining) +
                                              ";t=" + std::to_string(reset));
    } else {
      r.headers.emplace_back("RateLimit-Limit", std::to_string(d->limit));
      r.headers.emplace_back("RateLimit-Remaining", std::to_string(remaining));
      r.headers.emplace_back("RateLimit-Reset", std::to_string(reset));
    }
  }
  return r;
}

void ClientConnection::noteDecision(const LimitRuleConfig& rc, const char* action) {
  if (!ex_->decisions.empty()) ex_->decisions.push_back(',');
  ex_->decisions.append("\"limit\":{\"rule\":\"" + rc.id + "\",\"action\":\"" + action + "\"}");
}

int ClientConnection::limitPhase(const RouteConfig& route) {
  ex_->phase = Phase::kLimit;
  auto& limits = *ex_->gen->gen->limits;
  const auto& cfg = *ex_->gen->gen->config;
  const auto& h = parser_.head();
  Nanos now = ex_->head_ns;
  // Room for the most rules a route may have; a request fills a few (zeroing all cost more).
  UninitArray<limiter::RateRuleCheck, limiter::kMaxRateRules> rate;
  int rate_rule[limiter::kMaxRateRules];
  size_t nr = 0;
  UninitArray<limiter::ConcurrencyRuleCheck, limiter::kMaxConcurrencyRules> conc;
  int conc_rule[limiter::kMaxConcurrencyRules];
  size_t nc = 0;
  int ui = ex_->gen->gen->route_upstream[ex_->route];
  LimitRequestView view{&ex_->client_ip, route.name, h.target, &h.headers,
                        ui >= 0 ? std::string_view(cfg.upstreams[ui].name) : std::string_view()};
  view.jwt = limits.jwt();
  view.jwt_config = &cfg.jwt;
  if (ex_->item_looked_up)  // hot-item detection already matched the item source
    view.cache[view.cached++] = {cfg.hot_items.source.source, ex_->item_value, !ex_->item_value.empty()};
  view.now_unix = ex_->start_wall_us / 1000000;
  view.lua_keys = LuaPhase::limitKeys(*ex_);
  // Cluster exact-mode rules are charged in Redis first; the reply runs this phase again.
  if (ClusterPhase::startExact(*this, route, view) == PhaseResult::kSuspended) return 3;
  // Decision counters: this worker's cells, or a sink when metrics are off (unit tests).
  static const LimitRuleMetrics kNoMetrics{};
  const WorkerMetrics* wm = ex_->gen->metrics;
  auto counters = [&](int idx) -> const LimitRuleMetrics& {
    return wm ? wm->limits[static_cast<size_t>(idx)] : kNoMetrics;
  };
  auto count = [](const CounterShard& c) {
    if (c.bound()) c.inc();
  };
  std::string shadow;  // ids of shadow rules that would have refused
  auto noteShadow = [&](int idx) {
    count(counters(idx).shadow_rejected);
    if (!shadow.empty()) shadow.push_back(',');
    shadow.append("\"" + limits.rule(static_cast<size_t>(idx)).config->id + "\"");
  };
  auto flushShadow = [&] {
    if (shadow.empty()) return;
    if (!ex_->decisions.empty()) ex_->decisions.push_back(',');
    ex_->decisions.append("\"limit_shadow\":[" + shadow + "]");
  };

  for (int idx : route.limits) {
    auto& rt = limits.rule(static_cast<size_t>(idx));
    const auto& rc = *rt.config;
    // An operator's override from the admin API wins over the configured action.
    auto override = static_cast<RuleModeOverride>(rt.mode_override->load(std::memory_order_relaxed));
    if (override == RuleModeOverride::kOff) continue;
    bool shadow_mode = override == RuleModeOverride::kNone ? rc.action == LimitAction::kShadow
                                                           : override == RuleModeOverride::kShadow;
    if (rc.algorithm == LimitAlgorithm::kCircuitBreaker) {
      // Breakers first: an open breaker answers before any bucket is charged.
      int bi = rc.key[0].kind == LimitKeyKind::kUpstream ? ui : ex_->route;
      if (bi < 0 || static_cast<size_t>(bi) >= rt.breakers.size()) continue;
      limiter::BreakerPermit permit = rt.breakers[static_cast<size_t>(bi)]->tryPass(now);
      if (permit.admitted()) {
        if (ex_->breaker_count < Exchange::kMaxBreakers) ex_->breakers[ex_->breaker_count++] = std::move(permit);
        count(counters(idx).allowed);
        continue;
      }
      if (shadow_mode) {
        noteShadow(idx);
        continue;
      }
      bool degrade = rc.action == LimitAction::kDegrade;
      count(degrade ? counters(idx).degraded : counters(idx).rejected);
      flushShadow();
      noteDecision(rc, degrade ? "degrade" : rc.action == LimitAction::kRedirect ? "redirect" : "reject");
      releaseBreakers();
      // An open breaker is an upstream error: a cached route serves its stale entry first.
      if (route.cache && route.cache->serve_stale_on_error && serveStale(-1)) return 1;
      if (degrade && rc.degrade_from_cache > 0 && serveStale(rc.degrade_from_cache)) return 1;
      respondLocal(limitResponse(rc, rc.breaker.cooldown, nullptr), false);
      return 1;
    }
    uint64_t key, item_hash;
    if (!LimitSet::keyFor(rc, view, &key, &item_hash)) {
      count(counters(idx).skipped);
      continue;
    }
    // A hot-only rule governs an item only while the sketch marks it hot.
    // The sketch's answer for this request's item was taken when it was recorded.
    if (rc.only_hot && (!limits.hotItems() || item_hash == 0 ||
                        !(item_hash == ex_->item_hash ? ex_->item_hot : limits.hotItems()->isHot(item_hash))))
      continue;
    auto mode = shadow_mode ? limiter::RuleMode::kShadow : limiter::RuleMode::kEnforce;
    if (rt.rate && nr < limiter::kMaxRateRules) {
      // Past max_delay a delay is a rejection by that rule, uncharged like any other.
      limiter::RateLimiter* rl = rc.cluster_scope ? ClusterPhase::limiterFor(*this, idx, rt, key)
                                 : rt.item_limits.empty() ? rt.rate.get() : rt.rateFor(item_hash);
      rate[nr] = limiter::RateRuleCheck{rl, key, 1, mode, rc.max_delay};
      rate_rule[nr++] = idx;
    } else if (rt.concurrency && nc < limiter::kMaxConcurrencyRules) {
      limiter::ConcurrencyGate* gate = rc.cluster_scope ? ClusterPhase::gateFor(*this, idx, rt, key)
                                                        : rt.concurrency.get();
      conc[nc] = limiter::ConcurrencyRuleCheck{gate, key, mode};
      conc_rule[nc++] = idx;
    }
  }
  UninitArray<limiter::RateDecision, limiter::kMaxRateRules> decisions;  // admit() fills nr
  limiter::admitInto(ex_->admission, std::span<const limiter::RateRuleCheck>(rate.data(), nr),
                     std::span<const limiter::ConcurrencyRuleCheck>(conc.data(), nc), now,
                     std::span<limiter::RateDecision>(decisions.data(), nr));
  auto& adm = ex_->admission;

  if (adm.shadowRejects) {
    for (size_t i = 0; i < nr; i++)
      if (adm.shadowRejects & (1u << i)) noteShadow(rate_rule[i]);
    for (size_t j = 0; j < nc; j++)
      if (adm.shadowRejects & (1u << (16 + j))) noteShadow(conc_rule[j]);
  }
  flushShadow();

  if (adm.rejected()) {
    bool by_rate = adm.rejectedBy == limiter::RuleKind::kRate;
    int idx = by_rate ? rate_rule[adm.rejectedIndex] : conc_rule[adm.rejectedIndex];
    const auto& rc = *limits.rule(static_cast<size_t>(idx)).config;
    bool degrade = rc.action == LimitAction::kDegrade;
    count(degrade ? counters(idx).degraded : counters(idx).rejected);
    noteDecision(rc, degrade ? "degrade" : rc.action == LimitAction::kRedirect ? "redirect" : "reject");
    Nanos ra = by_rate ? adm.retryAfter : kSeconds;
    LocalResponse r = limitResponse(rc, ra, by_rate ? &decisions[adm.rejectedIndex] : nullptr);
    adm = limiter::Admission();  // a rejected request holds no slots
    releaseBreakers();
    // "Switch off the non-core feature": the last good answer of this GET, if recent enough.
    if (degrade && rc.degrade_from_cache > 0 && serveStale(rc.degrade_from_cache)) return 1;
    respondLocal(r, false);
    return 1;
  }

  for (size_t i = 0; i < nr; i++)
    if (!(adm.shadowRejects & (1u << i))) count(counters(rate_rule[i]).allowed);
  for (size_t j = 0; j < nc; j++)
    if (!(adm.shadowRejects & (1u << (16 + j)))) count(counters(conc_rule[j]).allowed);

  if (adm.verdict == limiter::Verdict::kDelay && adm.delay > 0) {
    // The longest delay came from some enforcing rule (each within its max_delay: admit()
    // turned longer ones into rejections); the log names it.
    int worst = -1;
    for (size_t i = 0; i < nr; i++)
      if (rate[i].mode == limiter::RuleMode::kEnforce &&
          decisions[i].verdict == limiter::Verdict::kDelay &&
          (worst < 0 || decisions[i].delay > decisions[worst].delay))
        worst = static_cast<int>(i);
    int delayed_idx = rate_rule[worst < 0 ? 0 : worst];
    auto& rt = limits.rule(static_cast<size_t>(delayed_idx));
    count(counters(delayed_idx).delayed);
    if (!ex_->decisions.empty()) ex_->decisions.push_back(',');
    ex_->decisions.append("\"limit\":{\"rule\":\"" + rt.config->id + "\",\"action\":\"delay\",\"delay_ms\":" +
                          std::to_string(adm.delay / kMillis) + "}");
    return 2;
  }
  return 0;
}

bool ClientConnection::admitToPool(const RouteConfig& route) {
  auto& gate = ex_->pool->cluster().gate();
  Nanos now = SteadyClock::monotonicNanos();
  ex_->pool_admission = gate.admit(route.priority, now);
  auto refusal = ex_->pool_admission.refusal;
  if (refusal == PoolGate::Refusal::kNone) return true;
  // Envoy's overflow answer: 503, retry soon, the upstream never sees it.
  int ui = ex_->gen->gen->route_upstream[ex_->route];
  if (const WorkerMetrics* m = ex_->gen->metrics)
    m->upstreams[ui].refused[static_cast<int>(refusal) - 1].inc();
  const char* reason = poolRefusalName(refusal);
  if (!ex_->decisions.empty()) ex_->decisions.push_back(',');
  ex_->decisions.append(std::string("\"pool\":{\"upstream\":\"") + ex_->pool->cluster().config().name +
                        "\",\"refused\":\"" + reason + "\"}");
  ex_->admission = limiter::Admission();  // the limit phase's slots go back too
  releaseBreakers();
  LocalResponse r;
  r.status = 503;
  r.content_type = "application/json";
  r.body = std::string("{\"error\":\"upstream busy\",\"reason\":\"") + reason + "\",\"request_id\":\"" +
           ex_->request_id + "\"}\n";
  r.headers.emplace_back("Retry-After", "1");
  respondLocal(r, false);
  return false;
}

void ClientConnection::recordHotItem() {
  const auto& cfg = *ex_->gen->gen->config;
  limiter::HeavyHitterSketch* sketch = ex_->gen->gen->limits->hotItems();
  if (!sketch) return;
  const auto& h = parser_.head();
  std::string_view item;
  ex_->item_looked_up = true;
  if (cfg.hot_items.source.default_item) {  // the usual case: no request view to build
    std::string_view path, query;
    splitTarget(h.target, &path, &query);
    if (!matchDefaultItemPath(path, &item)) return;
  } else {
    LimitRequestView view{&ex_->client_ip, cfg.routes[ex_->route].name, h.target, &h.headers};
    if (!LimitSet::sourceValue(cfg.hot_items.source, view, &item)) return;
  }
  ex_->item_value = item;  // a view into the request head: the limit phase reuses it
  // Item ids are short; a hostile 8 KB one is truncated inside the sketch's candidate list.
  ex_->item_hash = hash64(item);
  ex_->item_hot = sketch->record(item, ex_->item_hash, ex_->head_ns);
}

void ClientConnection::releaseBreakers() {
  for (int i = 0; i < ex_->breaker_count; i++) ex_->breakers[i] = limiter::BreakerPermit();
  ex_->breaker_count = 0;
}

void ClientConnection::reportBreakers(Nanos latency) {
  if (ex_->breaker_count == 0) return;
  // A client that went away (499) tells nothing about the upstream: the permits are dropped
  // without an outcome. 5xx answers and upstream errors are failures.
  if (ex_->status == 499 || ex_->status == 0) {
    releaseBreakers();
    return;
  }
  bool failed = ex_->status >= 500 || (!ex_->error.ok() && ex_->error.source == ErrorSource::kUpstream);
  Nanos now = SteadyClock::monotonicNanos();
  for (int i = 0; i < ex_->breaker_count; i++) {
    if (failed)
      ex_->breakers[i].fail(latency, now);
    else
      ex_->breakers[i].succeed(latency, now);
  }
  releaseBreakers();
}

int ClientConnection::identify() {
  auto& h = parser_.head();
  const auto& cfg = *ex_->gen->gen->config;
  ex_->client_ip = resolveClientIp(peer_ip_, h.headers, cfg.trusted_proxies);
  ex_->client_ip_str = ex_->client_ip == peer_ip_ ? peer_ip_str_ : ex_->client_ip.toString();

  std::string_view rid;
  if (h.headers.get(cfg.request_id_header, &rid) && isValidRequestId(rid)) {
    ex_->request_id.assign(rid);
  } else {
    ex_->request_id.resize(32);
    randomHex(ex_->request_id.data(), 32);
    ex_->request_id_generated = true;
  }
  std::string_view tp;
  if (h.headers.get("traceparent", &tp)) {
    if (isValidTraceparent(tp)) ex_->traceparent.assign(tp);
  }
  if (ex_->traceparent.empty() && cfg.trace_start) {
    writeTraceparent(&ex_->traceparent);
    ex_->traceparent_generated = true;
  }
  if (admin_) return 0;
  std::string_view path, query;
  splitTarget(h.target, &path, &query);
  ex_->route = ex_->gen->gen->router.match(h.headers.getOr("host"), path, h.method_name);
  return 0;
}

int ClientConnection::onBody(const char* p, size_t n) {
  if (!ex_ || closing_) return -1;
  ex_->bytes_in += n;
  const auto& cfg = *ex_->gen->gen->config;
  if (admin_) {
    if (ex_->body_buffer.size() + n > 1024 * 1024) return parser_.reject(413, "admin body too large");
    ex_->body_buffer.append(p, n);
    armTimer(TimerKind::kBody, cfg.client.body_timeout);
    return 0;
  }
  if (ex_->route >= 0) {
    const auto& route = cfg.routes[ex_->route];
    uint64_t max_body = route.max_body_size ? *route.max_body_size : cfg.client.max_body_size;
    if (max_body > 0 && ex_->bytes_in > max_body) {
      respondError(413, "request body too large", true);
      return -1;
    }
  }
  if (ex_->response_started) return 0;  // answered locally already: discard the rest
  if (timer_kind_ == TimerKind::kBody) armTimer(TimerKind::kBody, cfg.client.body_timeout);
  forwardBody(p, n);
  return 0;
}

int ClientConnection::onMessageComplete() {
  if (!ex_) return -1;
  ex_->request_complete = true;
  if (timer_kind_ == TimerKind::kBody || timer_kind_ == TimerKind::kHeader)
    armTimer(TimerKind::kNone, 0);
  if (admin_ && !ex_->response_started) {
    LocalResponse r = handleAdminRequest(worker_->server(), parser_.head(), ex_->body_buffer);
    respondLocal(r, false);
  } else if (!ex_->response_started && ex_->risk && RiskPhase::requestComplete(*this)) {
    // answered by the risk unit's endpoint
  } else if (!ex_->response_started && ex_->pool) {
    if (ex_->request_chunked) forwardBody(nullptr, 0);  // the last chunk
    ex_->request_body_sent_all = true;
    if (upstream_ && upstream_->state() == UpstreamConnection::State::kActive && !ex_->body_pending_head)
      upstream_->requestComplete();
  }
  // Upgrades continue as a tunnel; everything else waits here until the response is done.
  return ex_->upgrade ? 0 : HPE_PAUSED;
}

// ---------------------------------------------------------------------------------------------
// Content phase: proxy to the upstream pool

void ClientConnection::startContent() {
  ex_->phase = Phase::kContent;
  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  // An aggregation route's content is its Lua aggregate handler, not an upstream.
  if (LuaPhase::aggregate(*this, route) != PhaseResult::kContinue) return;
  int ui = ex_->gen->gen->route_upstream[ex_->route];
  if (ui < 0) {
    respondError(503, "route has no upstream", !ex_->request_complete);
    return;
  }
  ex_->pool = ex_->gen->pools[ui].get();
  ex_->delayed = false;
  // A cache hit or a coalesced wait needs no pool slot: only a request going upstream does.
  if (route.cache && cacheLookup(route)) return;
  if (!admitToPool(route)) return;
  proceedUpstream();
}

void ClientConnection::proceedUpstream() {
  ex_->pool->cluster().active_requests.fetch_add(1, std::memory_order_relaxed);
  ex_->counted_active = true;
  connectUpstream();
}

// ---------------------------------------------------------------------------------------------
// Micro-cache

void Exchange::endCacheWait() {
  cache_ticket = cache::WaitTicket();  // cancels: after this no onFilled runs for us
  if (cache_wait) {
    cache_wait->conn = nullptr;  // a result already posted finds nobody
    cache_wait.reset();
  }
  cache_waiting = false;
}

void CacheWait::onFilled(const cache::FillResult& result) {
  // The leader's thread: post and return (the coalescer's contract).
  std::shared_ptr<CacheWait> me = self.lock();
  if (!me) return;
  worker->post([me, result] {
    if (me->conn) me->conn->onCacheFilled(result);
  });
}

bool ClientConnection::buildCacheKey(const RouteConfig& route) {
  if (ex_->cache_keyed) return true;
  if (!route.cache) return false;
  const auto& h = parser_.head();
  cache::CacheRequestView view{h.headers.getOr("host"), h.target, &h.headers};
  cache::buildCacheKey(route.cache->key, view, &ex_->cache_key);
  ex_->cache_keyed = true;
  return true;
}

bool ClientConnection::cacheLookup(const RouteConfig& route) {
  const auto& rc = *route.cache;
  const auto& h = parser_.head();
  ex_->cache_request = cache::classifyRequest(rc.policy, h.method_name, h.headers);
  if (ex_->cache_request.cacheability == cache::RequestCacheability::kBypass) return false;
  // Hot-only: cold items go to the application (always current); hot ones are shielded.
  if (rc.hot_only && !ex_->item_hot) return false;
  buildCacheKey(route);
  auto* store = ex_->gen->gen->cache.get();
  Nanos now = SteadyClock::monotonicNanos();
  bool cacheable = ex_->cache_request.cacheability == cache::RequestCacheability::kCacheable;
  auto wait = std::make_shared<CacheWait>();
  wait->worker = worker_;
  wait->conn = this;
  wait->self = wait;
  cache::CacheAccess access = store->lookupOrJoin(
      ex_->cache_key, now, wait.get(), cacheable ? cache::JoinMode::kLeadOrWait : cache::JoinMode::kWaitOnly);
  ex_->cache_status = "MISS";
  if (access.lookup.state == cache::CacheState::kFresh) {
    serveCached(*access.lookup.response, "HIT");
    return true;
  }
  switch (access.join.role) {
    case cache::JoinRole::kLeader:
      ex_->cache_lease = std::move(access.join.lease);
      ex_->cache_capture = true;
      return false;
    case cache::JoinRole::kWaiter:
      ex_->cache_ticket = std::move(access.join.ticket);
      ex_->cache_wait = std::move(wait);
      ex_->cache_waiting = true;
      armTimer(TimerKind::kCacheWait, rc.lock_timeout);
      return true;
    case cache::JoinRole::kBusy:
    case cache::JoinRole::kNoFlight:
      if (access.lookup.state == cache::CacheState::kStale && access.lookup.response) {
        serveCached(*access.lookup.response, "STALE");  // someone else refreshes it
        return true;
      }
      return false;
  }
  return false;
}

void ClientConnection::onCacheFilled(const cache::FillResult& result) {
  if (!ex_ || !ex_->cache_waiting || ex_->response_started || closing_) return;
  ex_->endCacheWait();
  armTimer(ex_->request_complete ? TimerKind::kNone : TimerKind::kBody, clientConfig().body_timeout);
  if (result.outcome == cache::FillOutcome::kFilled && result.response) {
    serveCached(*result.response, "COALESCED");
    return;
  }
  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  if (result.outcome == cache::FillOutcome::kFailed && route.cache->serve_stale_on_error && serveStale(-1)) return;
  // The leader's answer was private or it failed with nothing stale: go upstream ourselves.
  if (!admitToPool(route)) return;
  proceedUpstream();
  if (upstream_) upstream_->flush();
  flush();
}

bool ClientConnection::serveStale(Nanos max_age) {
  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  if (!route.cache || ex_->response_started) return false;
  const auto& h = parser_.head();
  if (h.method != HTTP_GET && h.method != HTTP_HEAD) return false;
  buildCacheKey(route);
  auto r = ex_->gen->gen->cache->lookupStale(ex_->cache_key, SteadyClock::monotonicNanos(), max_age);
  if (!r) return false;
  serveCached(*r, "STALE");
  return true;
}

bool ClientConnection::serveStaleInsteadOf(int status) {
  // A 5xx from the upstream is an upstream error too: a cached route answers with its stale
  // entry instead (within max_stale). serveCached aborts the upstream connection, which its
  // parser notices as soon as this callback returns.
  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  if (!route.cache || !route.cache->serve_stale_on_error) return false;
  auto stale = ex_->gen->gen->cache->lookupStale(ex_->cache_key, SteadyClock::monotonicNanos());
  if (!stale) return false;
  ex_->cache_capture = false;
  ex_->cache_lease.fail();  // waiters look for the stale entry themselves
  if (!ex_->decisions.empty()) ex_->decisions.push_back(',');
  ex_->decisions.append("\"cache\":{\"stale_for_status\":" + std::to_string(status) + "}");
  serveCached(*stale, "STALE");
  return true;
}

void ClientConnection::serveCached(const cache::CachedResponse& r, const char* how) {
  if (closing_) return;
  dropUpstream();
  ex_->cache_status = how;
  ex_->status = r.status();
  ex_->response_started = true;
  const auto& cfg = *ex_->gen->gen->config;
  bool http10 = parser_.head().isHttp10();
  if (uint8_t lf = luaFilters()) {
    // A copy the filters may change; the entry stays as the upstream sent it.
    HeaderMap h = r.headers();
    char age[24];
    auto end = std::to_chars(age, age + sizeof(age), r.ageSeconds(SteadyClock::monotonicNanos())).ptr;
    h.add("Age", std::string_view(age, static_cast<size_t>(end - age)));
    if (!cfg.cache.status_header.empty()) h.add(cfg.cache.status_header, how);
    sendWholeFiltered(r.status(), h, r.body(), http10, lf);
    return;
  }
  out_.append(http10 ? "HTTP/1.0 " : "HTTP/1.1 ");
  appendUint(&out_, static_cast<uint64_t>(r.status()));
  out_.push_back(' ');
  out_.append(statusReason(r.status()));
  out_.append("\r\n");
  r.headers().serialize(&out_);
  bool no_body = r.status() == 204 || r.status() == 304;
  if (!no_body) {
    out_.append("Content-Length: ");
    appendUint(&out_, r.body().size());
    out_.append("\r\n");
  }
  out_.append("Age: ");
  appendUint(&out_, static_cast<uint64_t>(r.ageSeconds(SteadyClock::monotonicNanos())));
  out_.append("\r\n");
  if (!cfg.cache.status_header.empty()) {
    out_.append(cfg.cache.status_header);
    out_.append(": ");
    out_.append(how);
    out_.append("\r\n");
  }
  std::string_view existing;
  if (!r.headers().get(cfg.request_id_header, &existing)) appendRequestIdHeader();
  endLocalResponse(http10, ex_->is_head || no_body ? std::string_view() : r.body());
}

void ClientConnection::finishCacheFlight() {
  if (!ex_->cache_capture || !ex_->cache_lease.active()) return;
  ex_->cache_capture = false;
  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  const auto& rc = *route.cache;
  if (ex_->cache_too_big) {
    ex_->cache_lease.releaseUncacheable();
    return;
  }
  cache::StoreDecision d = cache::decideStore(rc.policy, rc.key, ex_->cache_key, ex_->cache_request,
                                              ex_->cache_code, ex_->cache_headers, ex_->cache_body.size());
  if (!d.store) {
    ex_->cache_lease.releaseUncacheable();
    return;
  }
  Nanos now = SteadyClock::monotonicNanos();
  auto entry = cache::CachedResponse::make(ex_->cache_code, ex_->cache_headers, std::move(ex_->cache_body),
                                           now, d.fresh_for, d.stale_for, ex_->cache_key.vary);
  ex_->cache_body = std::string();
  ex_->gen->gen->cache->store(ex_->cache_key, entry, now);
  ex_->cache_lease.publish(std::move(entry));
}

void ClientConnection::connectUpstream() {
  auto& pool = *ex_->pool;
  const auto& ucfg = pool.config();
  const auto& head = parser_.head();
  Nanos now = SteadyClock::monotonicNanos();
  uint64_t key = 0;
  const auto& rcfg = ex_->gen->gen->config->routes[ex_->route];
  int server = -1;
  if (LuaPhase::balancer(*this, rcfg, &server) != PhaseResult::kContinue || closing_) return;
  if (server < 0) {
    if (ucfg.balance == BalanceKind::kHash)
      key = balanceKeyHash(ucfg.hash_key, ex_->client_ip, head.target, head.headers);
    server = pool.pick(key, ex_->tried, now);
  }
  if (server < 0) {
    ex_->error = Error{ErrorSource::kUpstream, ErrorType::kNoHealthyServer, false,
                       "no upstream server available"};
    respondError(503, "no upstream server available", !ex_->request_complete);
    return;
  }
  if (server < 64) ex_->tried |= 1ULL << server;
  ex_->attempts++;
  ex_->server = server;
  auto& st = pool.cluster().server(static_cast<size_t>(server));
  st.active.fetch_add(1, std::memory_order_relaxed);
  st.requests.fetch_add(1, std::memory_order_relaxed);
  ex_->upstream_addr = st.address;
  ex_->upstream_start_ns = now;

  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  Nanos send_timeout = route.send_timeout ? route.send_timeout : ucfg.send_timeout;
  Nanos read_timeout = route.read_timeout ? route.read_timeout : ucfg.read_timeout;
  ex_->body_pending_head = true;
  upstream_ = pool.acquire(static_cast<size_t>(server), this);
  upstream_->setExpectations(ex_->is_head, send_timeout, read_timeout, clientConfig().buffer_size);
  if (upstream_->state() == UpstreamConnection::State::kActive) sendRequestHead();
}

void ClientConnection::onUpstreamConnected() {
  sendRequestHead();
  if (upstream_) upstream_->flush();
  flush();
}

void ClientConnection::sendRequestHead() {
  auto& h = parser_.head();
  std::string& out = upstream_->out();
  out.append(h.method_name);
  out.push_back(' ');
  out.append(h.target);
  out.append(" HTTP/1.1\r\n");

  const auto& cfg = *ex_->gen->gen->config;
  // Work on the parsed headers in place: removal marks fields, serialize() skips them.
  HeaderMap& hm = h.headers;
  if (!ex_->headers_filtered) {
    removeConnectionListed(hm);
    for (size_t i = 0; i < hm.size(); i++) {
      if (hm.removed(i)) continue;
      std::string_view n = hm.name(i);
      if (isHopByHop(n) || equalsIgnoreCase(n, "content-length") || equalsIgnoreCase(n, "expect") ||
          equalsIgnoreCase(n, "x-real-ip") || equalsIgnoreCase(n, "x-forwarded-proto") ||
          equalsIgnoreCase(n, "traceparent") || equalsIgnoreCase(n, cfg.request_id_header))
        hm.remove(i);
    }
    ex_->headers_filtered = true;
  }
  bool trusted_peer = cfg.trusted_proxies.contains(peer_ip_);
  // X-Forwarded-For: the chain the trusted proxies built, plus the peer; from an untrusted
  // peer only the peer itself, so a spoofed chain never reaches the storefront.
  std::string xff;
  for (size_t i = 0; i < hm.size(); i++) {
    if (hm.removed(i) || !equalsIgnoreCase(hm.name(i), "x-forwarded-for")) continue;
    if (trusted_peer) {
      if (!xff.empty()) xff.append(", ");
      xff.append(hm.value(i));
    }
    hm.remove(i);
  }
  hm.serialize(&out);
  if (h.version_minor == 0 && h.headers.count("host") == 0) {
    out.append("Host: ");
    out.append(ex_->upstream_addr);
    out.append("\r\n");
  }
  out.append("X-Forwarded-For: ");
  if (!xff.empty()) {
    out.append(xff);
    out.append(", ");
  }
  out.append(peer_ip_str_);
  out.append("\r\nX-Real-IP: ");
  out.append(ex_->client_ip_str);
  out.append("\r\nX-Forwarded-Proto: http\r\n");
  out.append(cfg.request_id_header);
  out.append(": ");
  out.append(ex_->request_id);
  out.append("\r\n");
  if (!ex_->traceparent.empty()) {
    out.append("traceparent: ");
    out.append(ex_->traceparent);
    out.append("\r\n");
  }
  if (ex_->upgrade) {
    std::string_view up;
    if (h.headers.get("upgrade", &up) || true) {
      // Upgrade was removed as hop-by-hop above; re-add it for the tunnel.
      for (size_t i = 0; i < hm.size(); i++)
        if (equalsIgnoreCase(hm.name(i), "upgrade")) up = hm.value(i);
      out.append("Connection: upgrade\r\nUpgrade: ");
      out.append(up);
      out.append("\r\n");
    }
  } else if (ex_->request_chunked) {
    out.append("Transfer-Encoding: chunked\r\n");
  } else if (h.has_content_length) {
    out.append("Content-Length: ");
    appendUint(&out, h.content_length);
    out.append("\r\n");
  }
  out.append("\r\n");
  ex_->body_pending_head = false;
  // Body bytes that arrived before the connection was ready, or a retry's replay.
  if (!ex_->retained_body.empty()) out.append(ex_->retained_body);
  if (!ex_->body_buffer.empty()) {
    if (ex_->body_retained &&
        ex_->retained_body.size() + ex_->body_buffer.size() <= clientConfig().buffer_size)
      ex_->retained_body.append(ex_->body_buffer);
    else
      ex_->body_retained = false, ex_->retained_body.clear();
    out.append(ex_->body_buffer);
    ex_->body_buffer.clear();
  }
  if (ex_->request_complete) upstream_->requestComplete();
  if (ex_->upgrade && !pending_.empty() && ex_->request_complete) {
    // Bytes the client sent after its upgrade request wait for the 101.
  }
  resumeReading();
}

void ClientConnection::forwardBody(const char* p, size_t n) {
  std::string framed;
  std::string* dst;
  bool direct = upstream_ && !ex_->body_pending_head &&
                upstream_->state() == UpstreamConnection::State::kActive;
  dst = direct ? &upstream_->out() : &ex_->body_buffer;
  size_t before = dst->size();
  if (ex_->request_chunked) {
    if (n == 0) {
      dst->append("0\r\n\r\n");
    } else {
      appendChunkHeader(dst, n);
      dst->append(p, n);
      dst->append("\r\n");
    }
  } else {
    dst->append(p, n);
  }
  if (direct) {
    size_t added = dst->size() - before;
    if (ex_->body_retained && ex_->retained_body.size() + added <= clientConfig().buffer_size) {
      ex_->retained_body.append(dst->data() + before, added);
    } else {
      ex_->body_retained = false;
      ex_->retained_body.clear();
    }
    if (upstream_->writeQueueSize() + dst->size() > clientConfig().buffer_size) pauseReading();
  } else if (ex_->body_buffer.size() > clientConfig().buffer_size) {
    pauseReading();
  }
}

void ClientConnection::onUpstreamDrained() {
  if (!closing_ && !parser_paused_) resumeReading();
  if (tunnel_) resumeReading();
}

void ClientConnection::onUpstreamInterim(const HttpMessageHead& head) {
  // We answered any Expect ourselves, so a 100 from upstream is noise; other 1xx (103 Early
  // Hints) go to HTTP/1.1 clients as they are.
  if (head.status == 100 || parser_.head().version_minor == 0) return;
  out_.append("HTTP/1.1 ");
  appendUint(&out_, static_cast<uint64_t>(head.status));
  out_.push_back(' ');
  out_.append(head.reason);
  out_.append("\r\n");
  HeaderMap copy = head.headers;
  removeConnectionListed(copy);
  for (size_t i = 0; i < copy.size(); i++)
    if (isHopByHop(copy.name(i))) copy.remove(i);
  copy.serialize(&out_);
  out_.append("\r\n");
}

void ClientConnection::onUpstreamHeaders(HttpMessageHead& head) {
  if (head.status >= 500 && ex_->cache_keyed && serveStaleInsteadOf(head.status)) return;
  ex_->phase = Phase::kHeaderFilter;
  ex_->status = head.status;
  ex_->response_started = true;
  auto& pool = *ex_->pool;
  pool.cluster().reportSuccess(static_cast<size_t>(ex_->server));
  bool client_10 = parser_.head().version_minor == 0;
  if (ex_->cache_capture) {
    const auto& rc = *ex_->gen->gen->config->routes[ex_->route].cache;
    ex_->cache_code = head.status;
    ex_->cache_headers = head.headers;  // before hop-by-hop removal: make() drops those itself
    if (head.has_content_length && !cache::bodyMayFit(rc.policy, static_cast<int64_t>(head.content_length)))
      ex_->cache_too_big = true;
  }
  auto& gate = pool.cluster().gate();
  if (!gate.saturationConfig().header.empty()) {
    std::string_view busy;
    if (head.headers.get(gate.saturationConfig().header, &busy))
      gate.reportSaturation(busy, SteadyClock::monotonicNanos());
  }

  removeConnectionListed(head.headers);
  std::string_view upgrade_proto;
  bool switching = head.status == 101 && ex_->upgrade;
  if (switching) head.headers.get("upgrade", &upgrade_proto);
  for (size_t i = 0; i < head.headers.size(); i++) {
    if (head.headers.removed(i)) continue;
    std::string_view n = head.headers.name(i);
    if (isHopByHop(n) || equalsIgnoreCase(n, "content-length")) head.headers.remove(i);
  }

  bool no_body = ex_->is_head || head.status == 204 || head.status == 304 || head.status < 200;
  if (ex_->upgrade && !switching) ex_->client_keep_alive = false;
  int status = head.status;
  if (uint8_t lf = luaFilters()) {
    LuaPhase::headerFilter(*this, &status, &head.headers);
    ex_->status = status;
    // The body's length may change: no Content-Length, the client gets chunked or close framing.
    ex_->lua_body_filter = (lf & kLuaBodyFilter) && !switching;
    ex_->response_no_body = no_body;
  }
  out_.append(client_10 ? "HTTP/1.0 " : "HTTP/1.1 ");
  appendUint(&out_, static_cast<uint64_t>(status));
  out_.push_back(' ');
  out_.append(head.reason.empty() || status != head.status ? statusReason(status)
                                                           : std::string_view(head.reason));
  out_.append("\r\n");
  head.headers.serialize(&out_);
  if (switching) {
    out_.append("Connection: upgrade\r\nUpgrade: ");
    out_.append(upgrade_proto);
    out_.append("\r\n\r\n");
    tunnel_ = true;
    upstream_->startTunnel();
    armTimer(TimerKind::kNone, 0);
    // Bytes the client sent right after its upgrade request belong to the tunnel.
    if (!pending_.empty()) {
      upstream_->out().append(pending_);
      pending_.clear();
    }
    parser_paused_ = true;
    resumeReading();
    return;
  }
  if (head.status == 101) {
    // A 101 we did not ask for: the stream can no longer be trusted.
    ex_->client_keep_alive = false;
  }
  if (no_body) {
    if (head.has_content_length && (ex_->is_head || head.status == 304) && !ex_->lua_body_filter) {
      out_.append("Content-Length: ");
      appendUint(&out_, head.content_length);
      out_.append("\r\n");
    }
  } else if (head.has_content_length && !ex_->lua_body_filter) {
    out_.append("Content-Length: ");
    appendUint(&out_, head.content_length);
    out_.append("\r\n");
  } else if (!client_10) {
    ex_->chunked_out = true;
    out_.append("Transfer-Encoding: chunked\r\n");
  } else {
    ex_->client_keep_alive = false;  // close-delimited body for an HTTP/1.0 client
  }
  {
    std::string_view existing;
    const auto& cfg = *ex_->gen->gen->config;
    if (!head.headers.get(cfg.request_id_header, &existing)) {
      out_.append(cfg.request_id_header);
      out_.append(": ");
      out_.append(ex_->request_id);
      out_.append("\r\n");
    }
  }
  if (ex_->cache_status) {
    const auto& status_header = ex_->gen->gen->config->cache.status_header;
    if (!status_header.empty()) {
      out_.append(status_header);
      out_.append(": ");
      out_.append(ex_->cache_status);
      out_.append("\r\n");
    }
  }
  if (!ex_->client_keep_alive || close_after_response_) out_.append("Connection: close\r\n");
  else if (client_10) out_.append("Connection: keep-alive\r\n");
  out_.append("\r\n");
  ex_->phase = Phase::kBody;
}

void ClientConnection::onUpstreamBody(const char* p, size_t n) {
  // The cache keeps the upstream's bytes: filters run on every delivery, hits included.
  if (ex_->cache_capture && !ex_->cache_too_big) {
    const auto& rc = *ex_->gen->gen->config->routes[ex_->route].cache;
    if (ex_->cache_body.size() + n > rc.policy.max_entry_bytes) {
      ex_->cache_too_big = true;
      ex_->cache_body = std::string();
    } else {
      ex_->cache_body.append(p, n);
    }
  }
  if (ex_->lua_body_filter) {
    writeFilteredBody({p, n}, false);
    return;
  }
  ex_->bytes_out += n;  // body bytes, like bytes_in (framing not counted)
  if (ex_->chunked_out) {
    appendChunkHeader(&out_, n);
    out_.append(p, n);
    out_.append("\r\n");
  } else {
    out_.append(p, n);
  }
}

bool ClientConnection::writeFilteredBody(std::string_view chunk, bool eof) {
  filter_buf_.assign(chunk);
  if (!LuaPhase::bodyFilter(*this, &filter_buf_, eof)) {
    // The head is out: the client can only learn of it by the body ending short (no last
    // chunk). What was filtered before leaves first.
    ex_->client_keep_alive = false;
    flushNow();
    closeNow();
    return false;
  }
  if (ex_->response_no_body || filter_buf_.empty()) return true;  // an empty chunk would end it
  ex_->bytes_out += filter_buf_.size();
  if (ex_->chunked_out) {
    appendChunkHeader(&out_, filter_buf_.size());
    out_.append(filter_buf_);
    out_.append("\r\n");
  } else {
    out_.append(filter_buf_);
  }
  return true;
}

void ClientConnection::onUpstreamReadDone() {
  flush();
  if (upstream_ && writeQueueSize() > clientConfig().buffer_size) upstream_->pauseReading();
}

void ClientConnection::onUpstreamComplete() {
  finishCacheFlight();
  // Every filtered response ends with one eof call, bodiless ones included.
  if (ex_->lua_body_filter && !writeFilteredBody({}, true)) return;
  if (ex_->chunked_out) out_.append("0\r\n\r\n");
  ex_->upstream_ns = SteadyClock::monotonicNanos() - ex_->upstream_start_ns;
  releaseUpstream(upstream_ && upstream_->reusable());
  finishResponse();
  if (!closing_) flush();
}

void ClientConnection::releaseUpstream(bool reusable) {
  if (ex_ && ex_->server >= 0 && ex_->pool) {
    ex_->pool->cluster().server(static_cast<size_t>(ex_->server)).active.fetch_sub(1, std::memory_order_relaxed);
    ex_->server = -1;
  }
  if (!upstream_) return;
  auto* u = upstream_;
  upstream_ = nullptr;
  if (ex_ && ex_->pool) ex_->pool->release(u, reusable);
  else u->abort();
}

void ClientConnection::onUpstreamTunnelData(const char* p, size_t n) {
  if (ex_) ex_->bytes_out += n;
  out_.append(p, n);
  flush();
  if (upstream_ && writeQueueSize() > clientConfig().buffer_size) upstream_->pauseReading();
}

void ClientConnection::onUpstreamTunnelClosed() {
  upstream_ = nullptr;
  if (ex_ && ex_->server >= 0 && ex_->pool) {
    ex_->pool->cluster().server(static_cast<size_t>(ex_->server)).active.fetch_sub(1, std::memory_order_relaxed);
    ex_->server = -1;
  }
  closeAfterWrite();
}

void ClientConnection::onUpstreamError(const Error& err) {
  upstream_ = nullptr;  // the connection closes itself
  if (ex_->server >= 0) {
    auto& cluster = ex_->pool->cluster();
    cluster.server(static_cast<size_t>(ex_->server)).active.fetch_sub(1, std::memory_order_relaxed);
    // A reused keep-alive connection the server had just closed is a race, not a sick server
    // (the retry goes to a fresh connection): only real failures count toward ejection.
    bool keepalive_race = err.type == ErrorType::kConnectionReset && err.retryable;
    if (!keepalive_race)
      cluster.reportFailure(static_cast<size_t>(ex_->server), SteadyClock::monotonicNanos());
    ex_->server = -1;
  }
  if (tunnel_) {
    closeAfterWrite();
    return;
  }
  if (ex_->response_started) {
    // Mid-body: the client can only learn of it by the connection closing short.
    ex_->error = err;
    closeNow();
    return;
  }
  retryOrFail(err);
  if (upstream_) upstream_->flush();  // a retry on a reused connection has its request queued
  if (!closing_) flush();
}

void ClientConnection::retryOrFail(const Error& err) {
  auto& pool = *ex_->pool;
  bool can = err.retryable && isIdempotent(parser_.head().method) && ex_->body_retained &&
             !ex_->upgrade && ex_->attempts <= static_cast<int>(pool.config().retries);
  if (can && !ex_->retrying && !pool.tryStartRetry()) can = false;
  if (can) {
    ex_->retrying = true;
    if (const WorkerMetrics* m = ex_->gen->metrics)
      m->upstreams[ex_->gen->gen->route_upstream[ex_->route]].retries.inc();
    LOG_INFO("request %s: retrying after %s from %s: %s", ex_->request_id.c_str(),
             errorTypeName(err.type), ex_->upstream_addr.c_str(), err.detail.c_str());
    connectUpstream();
    return;
  }
  ex_->error = err;
  ex_->cache_lease.fail();  // waiters fall back to stale or go upstream themselves
  const auto& route = ex_->gen->gen->config->routes[ex_->route];
  if (route.cache && route.cache->serve_stale_on_error && serveStale(-1)) return;
  int status = 502;
  if (err.type == ErrorType::kConnectTimeout || err.type == ErrorType::kReadTimeout ||
      err.type == ErrorType::kSendTimeout)
    status = 504;
  respondError(status, err.detail, !ex_->request_complete);
}

// ---------------------------------------------------------------------------------------------
// Local responses and the end of an exchange

void ClientConnection::respondError(int status, const std::string& reason, bool close_after) {
  if (!ex_) {
    // An error before any request began (garbage on the wire): still answer it properly.
    ex_ = std::make_unique<Exchange>();
    ex_->gen = worker_->current();
    ex_->start_ns = SteadyClock::monotonicNanos();
    ex_->start_wall_us = wallMicros();
    ex_->request_id = randomHex128();
  }
  // A request rejected before identify ran (bad head, 431, ...) still gets an id to quote.
  if (ex_->request_id.empty()) ex_->request_id = randomHex128();
  if (ex_->error.ok()) {
    ex_->error.source = status < 500 ? ErrorSource::kDownstream : ErrorSource::kUpstream;
    ex_->error.type = status < 500 ? ErrorType::kBadMessage : ErrorType::kNone;
    ex_->error.detail = reason;
  }
  LocalResponse r;
  r.status = status;
  r.body = std::to_string(status) + " " + std::string(statusReason(status)) +
           "\nrequest_id: " + ex_->request_id + "\n";
  respondLocal(r, close_after);
}

void ClientConnection::respondLocal(const LocalResponse& r, bool close_after) {
  if (closing_) return;
  if (ex_->response_started) {
    closeNow();
    return;
  }
  // A local answer while an upstream exchange is open (e.g. 413 mid-body): drop that one.
  dropUpstream();
  if (close_after) {
    ex_->client_keep_alive = false;
    close_after_response_ = true;
  }
  ex_->status = r.status;
  ex_->response_started = true;
  bool http10 = parser_.headersDone() && parser_.head().isHttp10();
  if (uint8_t lf = luaFilters()) {
    HeaderMap h;
    h.add("Content-Type", r.content_type);
    for (const auto& [k, v] : r.headers) h.add(k, v);
    sendWholeFiltered(r.status, h, r.body, http10, lf);
    return;
  }
  out_.append(http10 ? "HTTP/1.0 " : "HTTP/1.1 ");
  appendUint(&out_, static_cast<uint64_t>(r.status));
  out_.push_back(' ');
  out_.append(statusReason(r.status));
  out_.append("\r\nContent-Type: ");
  out_.append(r.content_type);
  out_.append("\r\nContent-Length: ");
  appendUint(&out_, r.body.size());
  out_.append("\r\n");
  for (const auto& [k, v] : r.headers) {
    out_.append(k);
    out_.append(": ");
    out_.append(v);
    out_.append("\r\n");
  }
  if (!ex_->request_id.empty()) appendRequestIdHeader();
  endLocalResponse(http10, ex_->is_head ? std::string_view() : std::string_view(r.body));
}

void ClientConnection::sendWholeFiltered(int status, HeaderMap& headers, std::string_view body,
                                         bool http10, uint8_t filters) {
  LuaPhase::headerFilter(*this, &status, &headers);
  ex_->status = status;
  bool no_body = ex_->is_head || status == 204 || status == 304;
  bool body_filter = filters & kLuaBodyFilter;
  if (body_filter) {
    filter_buf_.assign(no_body ? std::string_view() : body);
    if (!LuaPhase::bodyFilter(*this, &filter_buf_, true)) {
      // Nothing is sent yet: a plain 500 instead, without filters so it cannot fail again.
      ex_->lua_filters_off = true;
      ex_->response_started = false;
      respondError(500, "policy error", false);
      return;
    }
    body = filter_buf_;
  }
  out_.append(http10 ? "HTTP/1.0 " : "HTTP/1.1 ");
  appendUint(&out_, static_cast<uint64_t>(status));
  out_.push_back(' ');
  out_.append(statusReason(status));
  out_.append("\r\n");
  headers.serialize(&out_);
  // HEAD: the unfiltered length would be wrong once a body_filter may change it.
  if (status != 204 && status != 304 && !(ex_->is_head && body_filter)) {
    out_.append("Content-Length: ");
    appendUint(&out_, body.size());
    out_.append("\r\n");
  }
  std::string_view existing;
  if (!ex_->request_id.empty() && !headers.get(ex_->gen->gen->config->request_id_header, &existing))
    appendRequestIdHeader();
  endLocalResponse(http10, no_body ? std::string_view() : body);
}

void ClientConnection::dropUpstream() {
  if (!upstream_) return;
  auto* u = upstream_;
  upstream_ = nullptr;
  if (ex_->server >= 0 && ex_->pool) {
    ex_->pool->cluster().server(static_cast<size_t>(ex_->server)).active.fetch_sub(1, std::memory_order_relaxed);
    ex_->server = -1;
  }
  u->abort();
}

void ClientConnection::appendRequestIdHeader() {
  out_.append(ex_->gen->gen->config->request_id_header);
  out_.append(": ");
  out_.append(ex_->request_id);
  out_.append("\r\n");
}

void ClientConnection::endLocalResponse(bool http10, std::string_view body) {
  bool keep = ex_->client_keep_alive && !close_after_response_;
  if (!keep) out_.append("Connection: close\r\n");
  else if (http10) out_.append("Connection: keep-alive\r\n");
  out_.append("\r\n");
  out_.append(body);
  ex_->bytes_out += body.size();
  finishResponse();
  if (!closing_) flush();
}

void ClientConnection::finishResponse() {
  ex_->response_complete = true;
  ex_->phase = Phase::kLog;
  if (ex_->retrying) {
    ex_->pool->endRetry();
    ex_->retrying = false;
  }
  if (ex_->counted_active) {
    ex_->pool->cluster().active_requests.fetch_sub(1, std::memory_order_relaxed);
    ex_->counted_active = false;
  }
  if (!ex_->client_keep_alive || close_after_response_) {
    logExchange();
    closeAfterWrite();
    return;
  }
  // The rest of a request we answered early is read and dropped before the next one starts.
  if (ex_->request_complete && !in_parser_) finishExchange();
}

void ClientConnection::finishExchange() {
  logExchange();
  ex_->recycle();  // drops its generation reference too
  spare_ = std::move(ex_);
  parser_paused_ = false;
  parser_.resume();
  if (pending_.empty()) armTimer(TimerKind::kKeepAlive, clientConfig().keepalive_timeout);
  drivePending();
  // A pipelined request started here (e.g. from an upstream's completion, where no client read
  // follows to flush it) must not sit in the upstream's output buffer.
  if (upstream_ && !closing_) upstream_->flush();
}

namespace {

// Bernoulli(p) from a per-thread xorshift: no lock, no syscall, good enough for sampling logs.
bool sampled(double p) {
  if (p >= 1.0) return true;
  if (p <= 0.0) return false;
  thread_local uint64_t x = 0x9e3779b97f4a7c15ULL ^ reinterpret_cast<uintptr_t>(&x);
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return static_cast<double>(x >> 11) * 0x1.0p-53 < p;
}

}  // namespace

void ClientConnection::logExchange() {
  if (!ex_ || ex_->logged) return;
  ex_->logged = true;
  worker_->countRequest();
  // A proxied response already read the clock when it completed: reuse that reading.
  Nanos end_ns = ex_->upstream_ns >= 0 ? ex_->upstream_start_ns + ex_->upstream_ns
                                       : SteadyClock::monotonicNanos();
  Nanos total_ns = end_ns - ex_->start_ns;
  reportBreakers(ex_->upstream_ns >= 0 ? ex_->upstream_ns : total_ns);
  if (ex_->route >= 0 && !admin_) {
    RiskPhase::log(*this);
    LuaPhase::log(*this);
  }
  if (ex_->pool_admission.adaptive && ex_->upstream_ns >= 0 && ex_->status < 500)
    ex_->pool->cluster().gate().recordLatency(ex_->upstream_ns, end_ns);
  if (const WorkerMetrics* m = ex_->gen->metrics; m && !admin_) {
    // Handles bound for this exchange's generation: a few relaxed stores into this worker's
    // own cells, no lookup.
    const RouteMetrics& r = ex_->route >= 0 ? m->routes[ex_->route] : m->unmatched;
    r.requests[statusClassIndex(ex_->status)].inc();
    r.duration.observe(total_ns);
    r.request_body_bytes.inc(ex_->bytes_in);
    r.response_body_bytes.inc(ex_->bytes_out);
    if (ex_->upstream_ns >= 0 && ex_->route >= 0) {
      int ui = ex_->gen->gen->route_upstream[ex_->route];
      if (ui >= 0) m->upstreams[ui].response_duration.observe(ex_->upstream_ns);
    }
  }
  AccessLog* log = worker_->accessLog();
  if (log && !log->enabled()) log = nullptr;
  // The decision log takes a sample of the requests something decided on, for tuning rules.
  AccessLog* decision_log = worker_->decisionLog();
  if (decision_log && (!decision_log->enabled() || ex_->decisions.empty() ||
                       !sampled(ex_->gen->gen->config->access_log.decision_sample)))
    decision_log = nullptr;
  if (!log && !decision_log) return;
  const auto& cfg = *ex_->gen->gen->config;
  AccessLogEntry e;
  e.time_us = ex_->start_wall_us;
  e.request_id = ex_->request_id;
  e.client_ip = ex_->client_ip_str.empty() ? std::string_view() : ex_->client_ip_str;
  if (e.client_ip.empty()) e.client_ip = peer_ip_str_;
  bool have_head = parser_.headersDone() || !parser_.head().target.empty();
  e.method = have_head ? parser_.head().method_name : std::string_view();
  e.path = have_head ? std::string_view(parser_.head().target) : std::string_view();
  e.route = ex_->route >= 0 ? std::string_view(cfg.routes[ex_->route].name)
                            : (admin_ ? std::string_view("admin") : std::string_view());
  e.status = ex_->status;
  e.bytes_in = ex_->bytes_in;
  e.bytes_out = ex_->bytes_out;
  e.upstream = ex_->upstream_addr;
  e.upstream_us = ex_->upstream_ns >= 0 ? ex_->upstream_ns / 1000 : -1;
  e.total_us = total_ns / 1000;
  e.decisions = ex_->decisions;
  std::string err;
  if (!ex_->error.ok()) {
    err = std::string(errorTypeName(ex_->error.type)) + ": " + ex_->error.detail;
    e.error = err;
  }
  if (log) log->write(e);
  if (decision_log) decision_log->write(e);
}

// ---------------------------------------------------------------------------------------------
// Output, timers, closing

size_t ClientConnection::writeQueueSize() const {
  return uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&tcp_));
}

void ClientConnection::flush() {
  if (out_.empty() || closing_) return;
  if (!deferFlush(out_.size(), tcp_.loop)) flushNow();
}

void ClientConnection::flushNow() {
  if (out_.empty() || closing_) return;
  int rc = writeStream(reinterpret_cast<uv_stream_t*>(&tcp_), &out_, this, onWrite);
  if (rc != 0) {
    if (ex_ && ex_->status == 0) ex_->status = 499;
    closeNow();
    return;
  }
  if (writeQueueSize() > 0 && (timer_kind_ == TimerKind::kNone || timer_kind_ == TimerKind::kSend))
    armTimer(TimerKind::kSend, clientConfig().send_timeout);
}

void ClientConnection::onWrite(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  auto* self = static_cast<ClientConnection*>(req->data);
  delete w;
  if (self->closing_) return;
  if (status != 0) {
    self->closeNow();
    return;
  }
  size_t q = self->writeQueueSize();
  if (q == 0 && self->timer_kind_ == TimerKind::kSend) self->armTimer(TimerKind::kNone, 0);
  else if (q > 0 && self->timer_kind_ == TimerKind::kSend)
    self->armTimer(TimerKind::kSend, self->clientConfig().send_timeout);
  if (self->upstream_ && q < self->clientConfig().buffer_size / 2) self->upstream_->resumeReading();
}

void ClientConnection::armTimer(TimerKind kind, Nanos timeout) {
  timer_kind_ = kind;
  if (kind == TimerKind::kNone || timeout <= 0) {
    timer_kind_ = TimerKind::kNone;
    timer_.clear();
    return;
  }
  timer_.set(toTimerMs(timeout));
}

void ClientConnection::onTimer(void* owner) {
  auto* self = static_cast<ClientConnection*>(owner);
  if (self->closing_) {
    if (self->shutting_down_) self->forceCloseHandles();
    return;
  }
  switch (self->timer_kind_) {
    case TimerKind::kHeader:
      if (self->parser_.inMessage() || self->ex_) {
        self->respondError(408, "request header timeout", true);
      } else {
        self->closeNow();
      }
      break;
    case TimerKind::kBody:
      if (self->ex_ && !self->ex_->response_started) {
        self->ex_->error = Error{ErrorSource::kDownstream, ErrorType::kReadTimeout, false,
                                 "request body timeout"};
        self->respondError(408, "request body timeout", true);
      } else {
        self->closeNow();
      }
      break;
    case TimerKind::kKeepAlive:
      self->closeNow();
      break;
    case TimerKind::kSend:
      if (self->ex_) {
        self->ex_->error = Error{ErrorSource::kDownstream, ErrorType::kSendTimeout, false,
                                 "send to client timed out"};
      }
      self->closeNow();
      break;
    case TimerKind::kDelay:
      if (self->ex_ && self->ex_->delayed && !self->ex_->response_started) {
        self->armTimer(self->ex_->request_complete ? TimerKind::kNone : TimerKind::kBody,
                       self->clientConfig().body_timeout);
        self->runLaterPhases();
        if (self->upstream_) self->upstream_->flush();
        self->flush();
      }
      break;
    case TimerKind::kCacheWait:
      // The leader took longer than lock_timeout: stop waiting and go upstream ourselves,
      // unless its result is already on its way to this loop.
      if (self->ex_ && self->ex_->cache_waiting && !self->ex_->response_started &&
          self->ex_->cache_ticket.cancel()) {
        self->ex_->endCacheWait();
        self->armTimer(self->ex_->request_complete ? TimerKind::kNone : TimerKind::kBody,
                       self->clientConfig().body_timeout);
        const auto& route = self->ex_->gen->gen->config->routes[self->ex_->route];
        if (!self->admitToPool(route)) break;
        self->proceedUpstream();
        if (self->upstream_) self->upstream_->flush();
        self->flush();
      }
      break;
    case TimerKind::kNone:
      break;
  }
}

void ClientConnection::closeAfterWrite() {
  if (closing_) return;
  flushNow();  // before the shutdown, which queues behind written output only
  if (closing_) return;
  closing_ = true;
  shutting_down_ = true;
  if (upstream_) {
    auto* u = upstream_;
    upstream_ = nullptr;
    u->abort();
  }
  if (reading_ && !peer_eof_) uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
  // Give the last bytes send_timeout to leave, then close regardless.
  timer_kind_ = TimerKind::kNone;
  timer_.set(toTimerMs(clientConfig().send_timeout));
  auto* req = new uv_shutdown_t;
  req->data = this;
  if (uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&tcp_), onShutdown) != 0) {
    delete req;
    forceCloseHandles();
  }
}

void ClientConnection::onShutdown(uv_shutdown_t* req, int) {
  auto* self = static_cast<ClientConnection*>(req->data);
  delete req;
  self->forceCloseHandles();
}

void ClientConnection::closeNow() {
  if (closing_ && !shutting_down_) return;
  // What flush() left for the end of the turn was written at once before WriteBatch, and still
  // leaves first: a response and the client's EOF can arrive in one read.
  if (flush_deferred_ && !closing_) {
    flushNow();
    if (closing_) return;  // the write failed and closed us
  }
  if (!closing_) {
    closing_ = true;
    if (upstream_) {
      auto* u = upstream_;
      upstream_ = nullptr;
      if (ex_ && ex_->server >= 0 && ex_->pool) {
        ex_->pool->cluster().server(static_cast<size_t>(ex_->server)).active.fetch_sub(1, std::memory_order_relaxed);
        ex_->server = -1;
      }
      u->abort();
    }
    if (ex_) {
      if (ex_->retrying && ex_->pool) ex_->pool->endRetry(), ex_->retrying = false;
      if (ex_->counted_active && ex_->pool) {
        ex_->pool->cluster().active_requests.fetch_sub(1, std::memory_order_relaxed);
        ex_->counted_active = false;
      }
      if (ex_->status == 0) ex_->status = 499;
      logExchange();
    }
  }
  forceCloseHandles();
}

void ClientConnection::forceCloseHandles() {
  if (handles_closed_) return;
  handles_closed_ = true;
  closing_ = true;
  cancelFlush();
  timer_.stop();
  uv_close(timer_.handle(), [](uv_handle_t* h) {
    onClose(static_cast<ClientConnection*>(LazyTimer::ownerOf(h))->tcpHandle());
  });
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), onClose);
}

void ClientConnection::onClose(uv_handle_t* h) {
  auto* self = static_cast<ClientConnection*>(h->data);
  if (--self->handles_open_ == 0) {
    Worker* w = self->worker_;
    w->onConnectionClosed(self);
    delete self;
  }
}

}  // namespace sluice
