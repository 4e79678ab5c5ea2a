// The Lua phases on the proxy's side (docs/lua-api.md, docs/request-lifecycle.md): a
// lua::RequestHost over the connection's exchange, sub-requests to named upstream pools on the
// worker's loop (UpstreamPool connections, per-call deadline, body cap, cancelled with the
// request), and the per-worker runtime (timers, retired VMs, statistics).
#include "proxy/server/lua_phase.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <optional>

#include "core/hash.h"
#include "core/log.h"
#include "core/strings.h"
#include "proxy/config/lua_config.h"
#include "proxy/config/risk_settings.h"
#include "proxy/limit/limit_set.h"
#include "proxy/router/router.h"
#include "proxy/server/client_connection.h"
#include "proxy/server/worker.h"
#include "proxy/upstream/balance_key.h"
#include "proxy/upstream/upstream_pool.h"

namespace sluice {

class LuaSubrequest;

namespace {
// std::string::find_first_of(const char*) calls memchr on the set once per byte of the string:
// ~60 calls per sub-request for the path and header checks. Three compares a byte instead.
inline bool hasAnyOf(std::string_view s, char a, char b, char c) {
  for (char ch : s)
    if (ch == a || ch == b || ch == c) return true;
  return false;
}

// Host and the framing fields are the proxy's to write in a sub-request head. Dispatched on the
// length first: four out-of-line equalsIgnoreCase calls per header were ~40% of writeHead.
inline bool isHostOrFraming(std::string_view n) {
  switch (n.size()) {
    case 4: return equalsIgnoreCase(n, "host");
    case 10: return equalsIgnoreCase(n, "connection");
    case 14: return equalsIgnoreCase(n, "content-length");
    case 17: return equalsIgnoreCase(n, "transfer-encoding");
    default: return false;
  }
}
}  // namespace

// Per request (Exchange::lua). Destroyed with the exchange: cancels the coroutine and every
// sub-request still running.
struct LuaExchangeState final : lua::RequestHost {
  ClientConnection* conn = nullptr;
  LuaWorkerRuntime* rt = nullptr;
  // The request's VM; req's LuaRequest holds the reference that keeps it alive (a second
  // shared_ptr here cost a locked increment and decrement per request).
  lua::WorkerVm* vm = nullptr;
  std::optional<lua::LuaRequest> req;  // in place: one allocation per request less
  const RouteConfig* route = nullptr;
  lua::Phase phase = lua::Phase::kAccess;
  std::weak_ptr<LuaExchangeState> self;
  // resp.exit
  bool responded = false;
  int resp_status = 0;
  lua::HeaderList resp_headers;
  std::string resp_body;
  lua::HeaderList queued_headers;  // resp.set_header before there is a response
  // sluice.limit.set_key in rewrite: the values of lua:NAME limit sources.
  std::vector<std::pair<std::string, std::string>> limit_keys;
  // While header_filter runs: the response head being filtered. The head before the first
  // change is kept so a failing phase can leave the response as it was.
  HeaderMap* filter_headers = nullptr;
  int* filter_status = nullptr;
  bool filter_saved = false;
  HeaderMap saved_headers;
  int saved_status = 0;
  std::vector<uint32_t> resp_live;  // live fields of *filter_headers
  bool resp_live_dirty = true;
  // Sub-requests in flight: an intrusive list through LuaSubrequest (a std::map cost a node
  // allocation and a tree rebalance per sub-request).
  LuaSubrequest* subs = nullptr;
  void linkSub(LuaSubrequest* s);
  void unlinkSub(LuaSubrequest* s);
  // Detaches the list and cancels every sub-request on it (no callbacks).
  void cancelSubs();
  lua::OperationId next_sub = 1;
  // Request headers as the API sees them (live fields only), rebuilt after a change.
  std::vector<uint32_t> live;
  bool live_dirty = true;
  std::string scratch;

  ~LuaExchangeState() override;
  Exchange* exch = nullptr;      // the exchange this state lives in
  HttpMessageHead* hd = nullptr;  // its request head (the connection's parser)
  Worker* worker = nullptr;
  Exchange& ex() const { return *exch; }
  HttpMessageHead& head() const { return *hd; }
  void buildLive() {
    if (!live_dirty) return;
    live.clear();
    const HeaderMap& hm = head().headers;
    for (size_t i = 0; i < hm.size(); i++)
      if (!hm.removed(i)) live.push_back(static_cast<uint32_t>(i));
    live_dirty = false;
  }

  std::string_view method() const override { return head().method_name; }
  std::string_view path() const override {
    std::string_view p, q;
    splitTarget(head().target, &p, &q);
    return p;
  }
  std::string_view query() const override {
    std::string_view p, q;
    splitTarget(head().target, &p, &q);
    return q;
  }
  size_t headerCount() const override {
    const_cast<LuaExchangeState*>(this)->buildLive();
    return live.size();
  }
  std::string_view headerName(size_t i) const override { return head().headers.name(live[i]); }
  std::string_view headerValue(size_t i) const override { return head().headers.value(live[i]); }
  bool body(std::string_view* out) const override {
    const Exchange& e = ex();
    if (!e.request_complete) return false;
    if (!e.request_has_body) {
      *out = {};
      return true;
    }
    if (e.request_chunked || e.pool) return false;  // framed or already on its way upstream
    *out = e.body_buffer;
    return true;
  }
  // The cookie `name` of the request, as limit keys and balance keys read it (empty if absent).
  std::string_view cookie(std::string_view name) const {
    std::string_view value;
    return findCookie(head().headers, name, &value) ? value : std::string_view();
  }
  std::string_view var(lua::RequestVar v) const override {
    const Exchange& e = ex();
    switch (v) {
      case lua::RequestVar::kClientIp: return e.client_ip_str;
      case lua::RequestVar::kRoute: return route ? std::string_view(route->name) : std::string_view();
      case lua::RequestVar::kRequestId: return e.request_id;
      // The risk section's names when it has them (what the risk phase reads), else the defaults.
      case lua::RequestVar::kMemberId: {
        const Config& cfg = *e.gen->gen->config;
        return cookie(cfg.risk ? std::string_view(cfg.risk->member_cookie) : "member");
      }
      case lua::RequestVar::kDeviceId: {
        const Config& cfg = *e.gen->gen->config;
        std::string_view id = cookie(cfg.risk ? std::string_view(cfg.risk->device_cookie) : "device");
        if (id.empty() && cfg.risk && !cfg.risk->device_header.empty())
          id = head().headers.getOr(cfg.risk->device_header);
        return id;
      }
      case lua::RequestVar::kItemId: {
        if (e.item_looked_up && !e.item_value.empty()) return e.item_value;
        std::string_view id;
        return matchDefaultItemPath(path(), &id) ? id : std::string_view();
      }
      case lua::RequestVar::kFingerprint: return RiskPhase::fingerprint(*conn);
      default: return {};
    }
  }
  void setRequestHeader(std::string_view name, std::string_view value, bool remove) override {
    HeaderMap& hm = head().headers;
    // item_value may view the head's buffer, which add() can move: copy it first.
    Exchange& e = ex();
    if (e.item_looked_up && !e.item_value.empty()) {
      scratch.assign(e.item_value);
      e.item_value = scratch;
    }
    hm.removeAll(name);
    if (!remove) hm.add(name, value);
    live_dirty = true;
  }
  bool setLimitKey(std::string_view name, std::string_view value) override {
    for (auto& [k, v] : limit_keys)
      if (k == name) {
        v.assign(value);
        return true;
      }
    if (limit_keys.size() >= kMaxLimitKeys) return false;
    limit_keys.emplace_back(name, value);
    return true;
  }
  static constexpr size_t kMaxLimitKeys = 16;
  void respond(int status, std::span<const lua::HeaderView> headers, std::string_view b) override {
    responded = true;
    resp_status = status;
    resp_headers.clear();
    resp_headers.reserve(headers.size());
    for (const lua::HeaderView& h : headers)
      resp_headers.push_back(lua::Header{std::string(h.name), std::string(h.value)});
    resp_body.assign(b);
  }
  // Fields that carry the framing are the proxy's to write: a policy cannot break the stream.
  static bool isFramingField(std::string_view name) {
    for (const char* n : {"content-length", "transfer-encoding", "connection", "keep-alive",
                          "upgrade", "te", "trailer", "proxy-connection"})
      if (equalsIgnoreCase(name, n)) return true;
    return false;
  }
  void saveFilterHead() {
    if (filter_saved) return;
    saved_headers = *filter_headers;
    saved_status = *filter_status;
    filter_saved = true;
  }
  void setResponseHeader(std::string_view name, std::string_view value, bool remove) override {
    if (filter_headers) {
      if (isFramingField(name)) return;
      saveFilterHead();
      filter_headers->removeAll(name);
      if (!remove) filter_headers->add(name, value);
      resp_live_dirty = true;
      return;
    }
    auto& q = responded ? resp_headers : queued_headers;
    q.erase(std::remove_if(q.begin(), q.end(),
                           [&](const lua::Header& h) { return equalsIgnoreCase(h.name, name); }),
            q.end());
    if (!remove) q.push_back(lua::Header{std::string(name), std::string(value)});
  }
  int responseStatus() const override { return filter_status ? *filter_status : ex().status; }
  void setResponseStatus(int status) override {
    if (filter_status) {
      saveFilterHead();
      *filter_status = status;
    } else if (responded) {
      resp_status = status;
    }
  }
  void buildRespLive() {
    if (!resp_live_dirty) return;
    resp_live.clear();
    for (size_t i = 0; i < filter_headers->size(); i++)
      if (!filter_headers->removed(i)) resp_live.push_back(static_cast<uint32_t>(i));
    resp_live_dirty = false;
  }
  size_t responseHeaderCount() const override {
    if (!filter_headers) return 0;
    const_cast<LuaExchangeState*>(this)->buildRespLive();
    return resp_live.size();
  }
  std::string_view responseHeaderName(size_t i) const override {
    return filter_headers->name(resp_live[i]);
  }
  std::string_view responseHeaderValue(size_t i) const override {
    return filter_headers->value(resp_live[i]);
  }
  lua::LimitTakeResult limitTake(std::string_view rule_or_key, uint32_t cost) override;
  // Before the risk phase scored the request (rewrite, or a route without risk): kept here for
  // the risk phase to score and for risk.score(); after it, the risk unit takes them.
  bool riskAdd(std::string_view signal, int points) override {
    if (RiskPhase::addPoints(*conn, signal, points)) return true;
    for (auto& [name, sum] : risk_signals)
      if (std::string_view(name).substr(4) == signal) {
        sum = std::clamp(sum + points, -100000, 100000);
        return true;
      }
    if (risk_signals.size() >= kMaxRiskSignals) return false;
    risk_signals.emplace_back("lua." + std::string(signal), points);
    return true;
  }
  int riskScore() override {
    if (ex().risk_score >= 0) return ex().risk_score;
    int sum = 0;
    for (const auto& s : risk_signals) sum += s.second;
    return std::clamp(sum, 0, 100);
  }
  std::vector<std::pair<std::string, int>> risk_signals;  // ("lua.NAME", points)
  static constexpr size_t kMaxRiskSignals = 16;
  lua::OperationId startSubrequest(const lua::SubrequestSpec& spec,
                                   lua::SubrequestCompletion& done, uint64_t cookie) override;
  void cancelSubrequest(lua::OperationId id) override;
  void scheduleResume() override {
    if (rt) {
      rt->scheduleResume(self);
      return;
    }
    std::weak_ptr<LuaExchangeState> w = self;
    worker->post([w] { LuaPhase::onResume(w); });
  }
};

// ---------------------------------------------------------------------------------------------
// Sub-requests

class LuaSubrequest final : public UpstreamHandler {
  friend struct LuaExchangeState;  // its list of sub-requests in flight

 public:
  LuaSubrequest(LuaExchangeState* st, lua::OperationId id, std::shared_ptr<UpstreamPool> pool,
                lua::SubrequestCompletion* done, uint64_t cookie, size_t max_body, uv_loop_t* loop)
      : st_(st), id_(id), pool_(std::move(pool)), done_(done), cookie_(cookie),
        max_body_(max_body) {
    uv_timer_init(loop, &timer_);
    timer_.data = this;
  }

  void start(const lua::SubrequestSpec& spec, const std::string& request_id,
             const std::string& request_id_header) {
    Nanos now = SteadyClock::monotonicNanos();
    int server = pool_->pick(hash64(spec.path), 0, now);
    if (server < 0) {
      finish(false, "no server");
      return;
    }
    server_ = server;
    auto& st = pool_->cluster().server(static_cast<size_t>(server));
    st.active.fetch_add(1, std::memory_order_relaxed);
    st.requests.fetch_add(1, std::memory_order_relaxed);
    head_request_ = spec.method == "HEAD";
    Nanos timeout = spec.timeout > 0 ? spec.timeout : kSeconds;
    uv_timer_start(&timer_, onTimeout, static_cast<uint64_t>((timeout + kMillis - 1) / kMillis), 0);
    conn_ = pool_->acquire(static_cast<size_t>(server), this);
    conn_->setExpectations(head_request_, timeout, timeout, 1 << 20);
    // A kept-alive connection (the usual case) is ready now: the head goes straight into its
    // output buffer, which keeps its capacity between requests. A new one gets it in req_,
    // copied there once connected.
    const bool ready = conn_->state() == UpstreamConnection::State::kActive;
    writeHead(ready ? conn_->out() : req_, spec, st.address, request_id, request_id_header);
    if (ready) {
      conn_->requestComplete();
      conn_->flush();
    }
  }

  static void writeHead(std::string& out, const lua::SubrequestSpec& spec,
                        const std::string& address, const std::string& request_id,
                        const std::string& request_id_header) {
    // Sized first: appended piece by piece it reallocated three or four times per sub-request.
    size_t size = out.size() + spec.method.size() + spec.path.size() + address.size() +
                  spec.body.size() + request_id_header.size() + request_id.size() + 64;
    for (const auto& h : spec.headers) size += h.name.size() + h.value.size() + 4;
    out.reserve(size);
    using namespace std::string_view_literals;
    out.append(spec.method).append(" "sv).append(spec.path).append(" HTTP/1.1\r\nHost: "sv);
    out.append(address).append("\r\n"sv);
    bool has_rid = false;
    for (const auto& h : spec.headers) {
      if (isHostOrFraming(h.name)) continue;
      if (equalsIgnoreCase(h.name, request_id_header)) has_rid = true;
      out.append(h.name).append(": "sv).append(h.value).append("\r\n"sv);
    }
    if (!has_rid) out.append(request_id_header).append(": "sv).append(request_id).append("\r\n"sv);
    if (!spec.body.empty() || (spec.method != "GET" && spec.method != "HEAD")) {
      char num[24];
      auto [end, ec] = std::to_chars(num, num + sizeof num, spec.body.size());
      (void)ec;
      out.append("Content-Length: "sv).append(num, static_cast<size_t>(end - num)).append("\r\n"sv);
    }
    out.append("\r\n"sv).append(spec.body);
  }

  // The request is gone: no callback.
  void cancel() {
    st_ = nullptr;
    done_ = nullptr;
    dropConnection(false, false);
    destroy();
  }

 private:
  static void onTimeout(uv_timer_t* t) {
    auto* self = static_cast<LuaSubrequest*>(t->data);
    self->dropConnection(false, false);
    self->finish(false, "timeout");
  }

  void sendHead() {
    conn_->out().append(req_);
    req_.clear();
    conn_->requestComplete();
    conn_->flush();
  }

  void dropConnection(bool release, bool reusable) {
    if (server_ >= 0) {
      pool_->cluster().server(static_cast<size_t>(server_)).active.fetch_sub(1, std::memory_order_relaxed);
      server_ = -1;
    }
    if (!conn_) return;
    auto* c = conn_;
    conn_ = nullptr;
    if (release) pool_->release(c, reusable);
    else c->abort();
  }

  void finish(bool ok, const char* error) {
    if (finished_) return;
    finished_ = true;
    uv_timer_stop(&timer_);
    result_.ok = ok;
    if (!ok) {
      result_.error = error;
      result_.body.clear();
    }
    LuaExchangeState* st = st_;
    st_ = nullptr;
    if (st) st->unlinkSub(this);
    lua::SubrequestCompletion* done = done_;
    done_ = nullptr;
    if (done) done->onSubrequestDone(cookie_, std::move(result_));
    destroy();
  }

  void destroy() {
    if (destroying_) return;
    destroying_ = true;
    if (st_) st_->unlinkSub(this);
    uv_close(reinterpret_cast<uv_handle_t*>(&timer_),
             [](uv_handle_t* h) { delete static_cast<LuaSubrequest*>(h->data); });
  }

  // UpstreamHandler
  void onUpstreamConnected() override {
    if (conn_) sendHead();
  }
  void onUpstreamInterim(const HttpMessageHead&) override {}
  void onUpstreamHeaders(HttpMessageHead& head) override {
    result_.status = head.status;
    if (server_ >= 0) pool_->cluster().reportSuccess(static_cast<size_t>(server_));
    result_.headers.reserve(head.headers.size());  // one allocation, not one per doubling
    for (size_t i = 0; i < head.headers.size(); i++)
      if (!head.headers.removed(i))
        result_.headers.push_back(
            lua::Header{std::string(head.headers.name(i)), std::string(head.headers.value(i))});
    if (head.has_content_length && head.content_length > max_body_) {
      dropConnection(false, false);
      finish(false, "too large");
    }
  }
  void onUpstreamBody(const char* p, size_t n) override {
    if (finished_) return;
    if (result_.body.size() + n > max_body_) {
      dropConnection(false, false);
      finish(false, "too large");
      return;
    }
    result_.body.append(p, n);
  }
  void onUpstreamComplete() override {
    bool reusable = conn_ && conn_->reusable();
    dropConnection(true, reusable);
    finish(true, "");
  }
  void onUpstreamTunnelData(const char*, size_t) override {}
  void onUpstreamTunnelClosed() override {
    conn_ = nullptr;
    finish(false, "bad response");
  }
  void onUpstreamError(const Error& err) override {
    conn_ = nullptr;  // it closes itself
    if (server_ >= 0) {
      bool keepalive_race = err.type == ErrorType::kConnectionReset && err.retryable;
      if (!keepalive_race)
        pool_->cluster().reportFailure(static_cast<size_t>(server_), SteadyClock::monotonicNanos());
    }
    dropConnection(false, false);
    const char* why = "error";
    switch (err.type) {
      case ErrorType::kConnectTimeout:
      case ErrorType::kReadTimeout:
      case ErrorType::kSendTimeout: why = "timeout"; break;
      case ErrorType::kConnectFailed: why = "connect"; break;
      case ErrorType::kConnectionReset: why = "reset"; break;
      case ErrorType::kBadMessage: why = "bad response"; break;
      default: break;
    }
    finish(false, why);
  }
  void onUpstreamDrained() override {}
  void onUpstreamReadDone() override {}

  LuaExchangeState* st_;
  lua::OperationId id_;
  std::shared_ptr<UpstreamPool> pool_;
  lua::SubrequestCompletion* done_;  // nullptr once cancelled or completed
  uint64_t cookie_;
  size_t max_body_;
  uv_timer_t timer_;
  UpstreamConnection* conn_ = nullptr;
  int server_ = -1;
  std::string req_;
  bool head_request_ = false;
  bool finished_ = false;
  bool destroying_ = false;
  lua::SubrequestResult result_;
  // LuaExchangeState::subs
  LuaSubrequest* prev_ = nullptr;
  LuaSubrequest* next_ = nullptr;
  bool linked_ = false;
};

void LuaExchangeState::linkSub(LuaSubrequest* s) {
  s->prev_ = nullptr;
  s->next_ = subs;
  if (subs) subs->prev_ = s;
  subs = s;
  s->linked_ = true;
}

void LuaExchangeState::unlinkSub(LuaSubrequest* s) {
  if (!s->linked_) return;
  if (s->prev_) s->prev_->next_ = s->next_;
  else subs = s->next_;
  if (s->next_) s->next_->prev_ = s->prev_;
  s->prev_ = s->next_ = nullptr;
  s->linked_ = false;
}

void LuaExchangeState::cancelSubs() {
  LuaSubrequest* s = subs;
  subs = nullptr;
  while (s) {
    LuaSubrequest* next = s->next_;
    s->prev_ = s->next_ = nullptr;
    s->linked_ = false;
    s->cancel();
    s = next;
  }
}

lua::OperationId LuaExchangeState::startSubrequest(const lua::SubrequestSpec& spec,
                                                   lua::SubrequestCompletion& done,
                                                   uint64_t cookie) {
  lua::OperationId id = next_sub++;
  const Exchange& e = ex();
  const auto& cfg = *e.gen->gen->config;
  int ui = -1;
  for (size_t i = 0; i < cfg.upstreams.size(); i++)
    if (cfg.upstreams[i].name == spec.pool) ui = static_cast<int>(i);
  auto fail = [&](const char* why) {
    lua::SubrequestResult r;
    r.error = why;
    done.onSubrequestDone(cookie, std::move(r));  // synchronous completion is allowed
    return id;
  };
  if (ui < 0) return fail("no such pool");
  if (spec.path.empty() || spec.path[0] != '/' || hasAnyOf(spec.path, '\r', '\n', ' '))
    return fail("bad path");
  for (const auto& h : spec.headers)
    if (hasAnyOf(h.name, '\r', '\n', ':') || hasAnyOf(h.value, '\r', '\n', '\0'))
      return fail("bad header");
  auto* sub = new LuaSubrequest(this, id, e.gen->pools[static_cast<size_t>(ui)], &done, cookie,
                                spec.max_body ? spec.max_body : (1u << 20), worker->loop());
  linkSub(sub);
  sub->start(spec, e.request_id, cfg.request_id_header);
  return id;
}

void LuaExchangeState::cancelSubrequest(lua::OperationId id) {
  for (LuaSubrequest* s = subs; s; s = s->next_) {
    if (s->id_ != id) continue;
    unlinkSub(s);
    s->cancel();
    return;
  }
}

LuaExchangeState::~LuaExchangeState() {
  if (req) {
    req->cancel();
    req.reset();
  }
  cancelSubs();
  if (rt) rt->untrack(this);
}

lua::LimitTakeResult LuaExchangeState::limitTake(std::string_view rule_or_key, uint32_t cost) {
  lua::LimitTakeResult out;
  Exchange& e = ex();
  const auto& cfg = *e.gen->gen->config;
  auto& limits = *e.gen->gen->limits;
  // "rule" keys the rule as the limit phase would; "rule:anything" takes the rule with a key
  // the policy computed (e.g. "per_member:" .. member .. ":" .. item).
  std::string_view id = rule_or_key, custom;
  bool has_custom = false;
  int idx = -1;
  for (size_t i = 0; i < cfg.limit_rules.size(); i++)
    if (cfg.limit_rules[i].id == rule_or_key) idx = static_cast<int>(i);
  if (idx < 0) {
    size_t colon = rule_or_key.find(':');
    if (colon != std::string_view::npos) {
      id = rule_or_key.substr(0, colon);
      custom = rule_or_key.substr(colon + 1);
      has_custom = true;
      for (size_t i = 0; i < cfg.limit_rules.size(); i++)
        if (cfg.limit_rules[i].id == id) idx = static_cast<int>(i);
    }
  }
  if (idx < 0) {
    out.found = false;
    return out;
  }
  auto& rt = limits.rule(static_cast<size_t>(idx));
  if (!rt.rate) {
    out.found = false;  // only rate rules can be taken (concurrency slots need a release)
    return out;
  }
  uint64_t key = 0;
  if (has_custom) {
    key = hash64(custom, 0x10a7a6e5);
  } else {
    int ui = e.gen->gen->route_upstream[e.route];
    LimitRequestView view{&e.client_ip, route->name, head().target, &head().headers,
                          ui >= 0 ? std::string_view(cfg.upstreams[ui].name) : std::string_view()};
    view.jwt = limits.jwt();
    view.jwt_config = &cfg.jwt;
    view.now_unix = e.start_wall_us / 1000000;
    if (!LimitSet::keyFor(*rt.config, view, &key)) {
      out.found = false;
      return out;
    }
  }
  limiter::RateRuleCheck check{rt.rate.get(), key, cost, limiter::RuleMode::kEnforce, 0};
  limiter::RateDecision d;
  auto adm = limiter::admit(std::span<const limiter::RateRuleCheck>(&check, 1), {},
                            SteadyClock::monotonicNanos(), std::span<limiter::RateDecision>(&d, 1));
  out.allowed = !adm.rejected();
  out.remaining = std::max<int64_t>(0, d.remaining);
  Nanos reset = out.allowed ? d.reset : d.retryAfter;
  out.reset_seconds = static_cast<double>(reset) / static_cast<double>(kSeconds);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The phases

namespace {

// The block allocate_shared makes for a LuaExchangeState (the object and its reference counts)
// comes from a per-thread free list: a request with a policy then costs no malloc/free pair
// for it (callgrind: ~250 of the ~2,060 instructions a no-op access policy added). A block
// freed on another thread (shutdown) joins that thread's list; each list is its own thread's.
template <class T>
struct ExchangeStateAlloc {
  using value_type = T;
  static constexpr size_t kMaxFree = 256;  // blocks kept per thread (~0.2 MB)
  ExchangeStateAlloc() = default;
  template <class U>
  ExchangeStateAlloc(const ExchangeStateAlloc<U>&) noexcept {}
  T* allocate(size_t n) {
    FreeList& f = freeList();
    if (n == 1 && !f.blocks.empty()) {
      void* p = f.blocks.back();
      f.blocks.pop_back();
      return static_cast<T*>(p);
    }
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept {
    FreeList& f = freeList();
    if (n == 1 && f.blocks.size() < f.blocks.capacity()) {
      f.blocks.push_back(p);  // within the reserved capacity: never allocates
      return;
    }
    ::operator delete(p);
  }
  struct FreeList {
    std::vector<void*> blocks;
    FreeList() { blocks.reserve(kMaxFree); }
    ~FreeList() {
      for (void* p : blocks) ::operator delete(p);
    }
  };
  static FreeList& freeList() {
    thread_local FreeList f;
    return f;
  }
  template <class U>
  bool operator==(const ExchangeStateAlloc<U>&) const noexcept { return true; }
};

}  // namespace

LuaExchangeState* LuaPhase::ensureState(ClientConnection& conn, const RouteConfig& route,
                                        uint8_t) {
  Exchange& e = *conn.ex_;
  if (e.lua) return e.lua.get();
  auto st = std::allocate_shared<LuaExchangeState>(ExchangeStateAlloc<LuaExchangeState>());
  st->conn = &conn;
  st->exch = &e;
  st->hd = &conn.parser_.head();
  st->worker = conn.worker_;
  st->rt = conn.worker_->lua();
  st->vm = e.gen->vm.get();
  st->route = &route;
  st->self = st;
  // The chain resolved when the generation was prepared (same VM: e.gen holds it).
  size_t ri = static_cast<size_t>(e.route);
  st->req.emplace(e.gen->vm, *st,
                  ri < e.gen->lua_route_chains.size() ? e.gen->lua_route_chains[ri]
                                                      : st->vm->routeChain(route.name));
  if (st->rt) st->rt->track(st.get());
  LuaExchangeState* raw = st.get();
  e.lua = std::move(st);  // moved, not copied: a copy is one more locked increment and decrement
  return raw;
}

namespace {

uint8_t routeMask(const Exchange& e) {
  if (!e.gen->vm || e.route < 0 || static_cast<size_t>(e.route) >= e.gen->lua_route_phases.size())
    return 0;
  return e.gen->lua_route_phases[static_cast<size_t>(e.route)];
}

LocalResponse localFrom(LuaExchangeState& st) {
  LocalResponse r;
  r.status = st.resp_status >= 100 && st.resp_status <= 599 ? st.resp_status : 500;
  r.body = std::move(st.resp_body);
  for (auto* list : {&st.queued_headers, &st.resp_headers}) {
    for (auto& h : *list) {
      if (equalsIgnoreCase(h.name, "content-type")) {
        r.content_type = h.value;
        continue;
      }
      if (equalsIgnoreCase(h.name, "content-length") || equalsIgnoreCase(h.name, "connection") ||
          equalsIgnoreCase(h.name, "transfer-encoding") ||
          h.name.find_first_of("\r\n:") != std::string::npos ||
          h.value.find_first_of("\r\n") != std::string::npos)
        continue;
      r.headers.emplace_back(h.name, h.value);
    }
  }
  st.queued_headers.clear();  // applied: the header filter must not add them again
  return r;
}

}  // namespace

PhaseResult LuaPhase::handle(ClientConnection& conn, LuaExchangeState& st, lua::RunResult r) {
  Exchange& e = *conn.ex_;
  switch (r.status) {
    case lua::RunStatus::kContinue:
      if (st.phase != lua::Phase::kAggregate) return PhaseResult::kContinue;
      r.error = "route '" + st.route->name + "': the aggregate phase ended without sluice.resp.exit";
      [[fallthrough]];
    case lua::RunStatus::kError: {
      LOG_ERROR("lua: request %s route %s: %s", e.request_id.c_str(), st.route->name.c_str(),
                r.error.c_str());
      if (!e.decisions.empty()) e.decisions.push_back(',');
      e.decisions.append("\"lua\":\"error\"");
      e.error = Error{ErrorSource::kInternal, ErrorType::kNone, false, "lua policy error"};
      int status = r.error_status >= 500 && r.error_status <= 599 ? r.error_status : 500;
      conn.respondError(status, "policy error", !e.request_complete);
      return PhaseResult::kAnswered;
    }
    case lua::RunStatus::kResponded:
      conn.respondLocal(localFrom(st), false);
      return PhaseResult::kAnswered;
    case lua::RunStatus::kYielded:
      return PhaseResult::kSuspended;
  }
  return PhaseResult::kContinue;
}

PhaseResult LuaPhase::access(ClientConnection& conn, const RouteConfig& route) {
  uint8_t mask = routeMask(*conn.ex_);
  if (!(mask & kLuaAccess)) return PhaseResult::kContinue;
  LuaExchangeState* st = ensureState(conn, route, mask);
  st->phase = lua::Phase::kAccess;
  return handle(conn, *st, st->req->run(lua::Phase::kAccess));
}

PhaseResult LuaPhase::rewrite(ClientConnection& conn, const RouteConfig& route) {
  uint8_t mask = routeMask(*conn.ex_);
  if (!(mask & kLuaRewrite)) return PhaseResult::kContinue;
  LuaExchangeState* st = ensureState(conn, route, mask);
  st->phase = lua::Phase::kRewrite;
  return handle(conn, *st, st->req->run(lua::Phase::kRewrite));
}

PhaseResult LuaPhase::balancer(ClientConnection& conn, const RouteConfig& route, int* server) {
  *server = -1;
  uint8_t mask = routeMask(*conn.ex_);
  if (!(mask & kLuaBalancer) || !conn.ex_->pool) return PhaseResult::kContinue;
  LuaExchangeState* st = ensureState(conn, route, mask);
  st->phase = lua::Phase::kBalancer;
  std::string peer;
  lua::RunResult r = st->req->runBalancer(&peer);
  if (r.status != lua::RunStatus::kContinue) return handle(conn, *st, std::move(r));
  if (peer.empty()) return PhaseResult::kContinue;
  Exchange& e = *conn.ex_;
  const UpstreamCluster& cluster = e.pool->cluster();
  for (size_t i = 0; i < cluster.size(); i++) {
    if (cluster.server(i).address != peer) continue;
    // A retry must move on, and an ejected server stays ejected: the configured balancing
    // decides then, as it does when the policy names no peer.
    const bool tried = i < 64 && (e.tried & (1ULL << i));
    if (!tried && cluster.server(i).available(SteadyClock::monotonicNanos())) *server = static_cast<int>(i);
    return PhaseResult::kContinue;
  }
  LOG_ERROR("lua: request %s route %s: the balancer named '%s', not a server of pool '%s'; "
            "balancing as configured",
            e.request_id.c_str(), route.name.c_str(), peer.substr(0, 64).c_str(),
            e.pool->config().name.c_str());
  return PhaseResult::kContinue;
}

const std::vector<std::pair<std::string, std::string>>* LuaPhase::limitKeys(const Exchange& e) {
  return e.lua && !e.lua->limit_keys.empty() ? &e.lua->limit_keys : nullptr;
}

const std::vector<std::pair<std::string, int>>* LuaPhase::riskSignals(const Exchange& e) {
  return e.lua && !e.lua->risk_signals.empty() ? &e.lua->risk_signals : nullptr;
}

PhaseResult LuaPhase::aggregate(ClientConnection& conn, const RouteConfig& route) {
  uint8_t mask = routeMask(*conn.ex_);
  if (!(mask & kLuaAggregate)) return PhaseResult::kContinue;
  LuaExchangeState* st = ensureState(conn, route, mask);
  st->phase = lua::Phase::kAggregate;
  PhaseResult r = handle(conn, *st, st->req->run(lua::Phase::kAggregate));
  // Suspended is "answered later" for the content phase: the upstream is not used.
  return r == PhaseResult::kContinue ? PhaseResult::kAnswered : r;
}

void LuaPhase::onResume(const std::weak_ptr<LuaExchangeState>& w) {
  std::shared_ptr<LuaExchangeState> st = w.lock();
  if (!st || !st->req) return;
  ClientConnection& c = *st->conn;
  if (c.closing_ || !c.ex_ || c.ex_->lua != st || c.ex_->response_started) return;
  lua::Phase phase = st->phase;
  PhaseResult pr = handle(c, *st, st->req->resume());
  if (pr == PhaseResult::kContinue && phase == lua::Phase::kAccess) {
    c.resumeAfterAccess();
    return;
  }
  if (pr == PhaseResult::kContinue && phase == lua::Phase::kRewrite) {
    c.resumeAfterRewrite();
    return;
  }
  if (c.upstream_ && !c.closing_) c.upstream_->flush();
  if (!c.closing_) c.flush();
}

void LuaPhase::log(ClientConnection& conn) {
  Exchange& e = *conn.ex_;
  LuaExchangeState* st = e.lua.get();
  if (!st || !st->req) return;
  // The client went away (or the response is done): nothing may still run for it.
  if (st->req->waiting()) st->req->cancel();
  st->cancelSubs();
  if (routeMask(e) & kLuaLog) {
    st->phase = lua::Phase::kLog;
    lua::RunResult r = st->req->run(lua::Phase::kLog);
    if (r.status == lua::RunStatus::kError)
      LOG_ERROR("lua: request %s log phase: %s", e.request_id.c_str(), r.error.c_str());
  }
}

uint8_t LuaPhase::filters(const Exchange& e) {
  if (e.lua_filters_off) return 0;
  uint8_t m = routeMask(e) & (kLuaHeaderFilter | kLuaBodyFilter);
  if (e.lua && !e.lua->queued_headers.empty()) m |= kLuaHeaderFilter;
  return m;
}

void LuaPhase::headerFilter(ClientConnection& conn, int* status, HeaderMap* headers) {
  Exchange& e = *conn.ex_;
  LuaExchangeState* st = ensureState(conn, e.gen->gen->config->routes[e.route], 0);
  for (const auto& h : st->queued_headers) {
    if (LuaExchangeState::isFramingField(h.name)) continue;
    headers->removeAll(h.name);
    headers->add(h.name, h.value);
  }
  st->queued_headers.clear();
  if (!(routeMask(e) & kLuaHeaderFilter) || !st->req) return;
  // A response made while a handler waits (a timeout, a 413): that handler never resumes.
  if (st->req->waiting()) st->req->cancel();
  st->filter_headers = headers;
  st->filter_status = status;
  st->filter_saved = false;
  st->resp_live_dirty = true;
  st->phase = lua::Phase::kHeaderFilter;
  lua::RunResult r = st->req->run(lua::Phase::kHeaderFilter);
  st->filter_headers = nullptr;
  st->filter_status = nullptr;
  if (r.status != lua::RunStatus::kError) return;
  // Headers are not sent yet, but a failing decoration should not take the response down: it
  // goes out as it was before the phase (docs/lua-api.md, "Response filters").
  if (st->filter_saved) {
    *headers = std::move(st->saved_headers);
    *status = st->saved_status;
  }
  st->filter_saved = false;
  LOG_ERROR("lua: request %s route %s: %s", e.request_id.c_str(), st->route->name.c_str(),
            r.error.c_str());
  if (!e.decisions.empty()) e.decisions.push_back(',');
  e.decisions.append("\"lua\":\"header_filter_error\"");
}

bool LuaPhase::bodyFilter(ClientConnection& conn, std::string* chunk, bool eof) {
  Exchange& e = *conn.ex_;
  LuaExchangeState* st = e.lua.get();
  if (!st || !st->req) return true;
  st->phase = lua::Phase::kBodyFilter;
  lua::RunResult r = st->req->runBodyFilter(chunk, eof);
  if (r.status != lua::RunStatus::kError) return true;
  LOG_ERROR("lua: request %s route %s: %s", e.request_id.c_str(), st->route->name.c_str(),
            r.error.c_str());
  if (!e.decisions.empty()) e.decisions.push_back(',');
  e.decisions.append("\"lua\":\"body_filter_error\"");
  e.error = Error{ErrorSource::kInternal, ErrorType::kNone, false, "lua body_filter error"};
  return false;
}

void LuaPhase::closeConnection(ClientConnection& conn) {
  if (conn.ex_ && conn.ex_->status == 0) conn.ex_->status = 503;
  conn.closeNow();
}

// ---------------------------------------------------------------------------------------------
// Per-worker runtime

struct LuaWorkerRuntime::Timer {
  uv_timer_t handle;
  LuaWorkerRuntime* rt;
  lua::OperationId id;
  lua::TimerCallback fn;
};

LuaWorkerRuntime::LuaWorkerRuntime(Worker* worker, uv_loop_t* loop) : worker_(worker), loop_(loop) {
  sweep_timer_ = new uv_timer_t;
  uv_timer_init(loop_, sweep_timer_);
  sweep_timer_->data = this;
  uv_timer_start(sweep_timer_, onSweep, 1000, 1000);
  uv_unref(reinterpret_cast<uv_handle_t*>(sweep_timer_));
  // Started only while resumes are queued; unref'd like the sweep timer, since the suspended
  // request's own connection keeps the loop alive.
  resume_check_ = new uv_check_t;
  uv_check_init(loop_, resume_check_);
  resume_check_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(resume_check_));
  resume_idle_ = new uv_idle_t;
  uv_idle_init(loop_, resume_idle_);
  resume_idle_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(resume_idle_));
}

void LuaWorkerRuntime::scheduleResume(std::weak_ptr<LuaExchangeState> st) {
  if (closed_) return;  // the worker is finishing: nothing is left to resume for
  resumes_.push_back(std::move(st));
  if (resume_armed_) return;
  resume_armed_ = true;
  uv_check_start(resume_check_, onResumeCheck);
  uv_idle_start(resume_idle_, [](uv_idle_t*) {});
}

void LuaWorkerRuntime::onResumeCheck(uv_check_t* h) {
  auto* rt = static_cast<LuaWorkerRuntime*>(h->data);
  // Resumes scheduled while this batch runs wait for the next turn (the idle handle stays on,
  // so that turn does not block in poll).
  rt->resuming_.swap(rt->resumes_);
  for (auto& w : rt->resuming_) LuaPhase::onResume(w);
  rt->resuming_.clear();
  if (rt->resumes_.empty() && !rt->closed_) {
    rt->resume_armed_ = false;
    uv_check_stop(rt->resume_check_);
    uv_idle_stop(rt->resume_idle_);
  }
}

LuaWorkerRuntime::~LuaWorkerRuntime() { close(); }

Nanos LuaWorkerRuntime::now() const { return SteadyClock::monotonicNanos(); }

lua::OperationId LuaWorkerRuntime::startTimer(Nanos delay, lua::TimerCallback fn) {
  lua::OperationId id = next_id_++;
  if (closed_) return id;
  auto* t = new Timer{{}, this, id, std::move(fn)};
  uv_timer_init(loop_, &t->handle);
  t->handle.data = t;
  uv_timer_start(&t->handle, [](uv_timer_t* h) {
    auto* t = static_cast<Timer*>(h->data);
    t->rt->timers_.erase(t->id);
    auto fn = std::move(t->fn);
    uv_close(reinterpret_cast<uv_handle_t*>(h), [](uv_handle_t* x) { delete static_cast<Timer*>(x->data); });
    if (fn) fn();
  }, static_cast<uint64_t>(std::max<Nanos>(0, delay) / kMillis), 0);
  timers_[id] = t;
  return id;
}

void LuaWorkerRuntime::cancelTimer(lua::OperationId id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return;
  Timer* t = it->second;
  timers_.erase(it);
  t->fn = nullptr;
  uv_timer_stop(&t->handle);
  uv_close(reinterpret_cast<uv_handle_t*>(&t->handle), [](uv_handle_t* x) { delete static_cast<Timer*>(x->data); });
}

void LuaWorkerRuntime::log(LogLevel level, std::string_view message) {
  if (static_cast<int>(level) < static_cast<int>(log::level())) return;
  log::write(level, "%.*s", static_cast<int>(message.size()), message.data());
}

void LuaWorkerRuntime::close() {
  if (closed_) return;
  closed_ = true;
  auto ts = std::move(timers_);
  for (auto& [id, t] : ts) {
    t->fn = nullptr;
    uv_timer_stop(&t->handle);
    uv_close(reinterpret_cast<uv_handle_t*>(&t->handle), [](uv_handle_t* x) { delete static_cast<Timer*>(x->data); });
  }
  resumes_.clear();
  if (resume_check_) {
    uv_check_stop(resume_check_);
    uv_close(reinterpret_cast<uv_handle_t*>(resume_check_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_check_t*>(h); });
    resume_check_ = nullptr;
    uv_idle_stop(resume_idle_);
    uv_close(reinterpret_cast<uv_handle_t*>(resume_idle_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
    resume_idle_ = nullptr;
  }
  if (sweep_timer_) {
    uv_timer_stop(sweep_timer_);
    uv_close(reinterpret_cast<uv_handle_t*>(sweep_timer_),
             [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
    sweep_timer_ = nullptr;
  }
}

void LuaWorkerRuntime::track(LuaExchangeState* s) { states_.push_back(s); }

void LuaWorkerRuntime::untrack(LuaExchangeState* s) {
  auto it = std::find(states_.begin(), states_.end(), s);
  if (it != states_.end()) {
    *it = states_.back();
    states_.pop_back();
  }
}

void LuaWorkerRuntime::retireVm(lua::WorkerVmPtr vm, uint32_t max_generations, Nanos retire_timeout) {
  vm->retire();
  retired_.push_back(Retired{vm, now() + retire_timeout});
  vm.reset();
  // The current VM counts as one live generation: past the cap, the oldest retired VMs'
  // stragglers are cancelled so their memory goes.
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                [](const Retired& r) { return r.vm.expired(); }),
                 retired_.end());
  while (retired_.size() + 1 > max_generations) {
    if (auto old = retired_.front().vm.lock()) cancelRequestsOn(old.get());
    retired_.erase(retired_.begin());
  }
  publish(current_, generation_);
}

void LuaWorkerRuntime::cancelRequestsOn(const lua::WorkerVm* vm) {
  std::vector<ClientConnection*> conns;
  for (auto* s : states_)
    if (s->vm == vm && s->conn) conns.push_back(s->conn);
  for (auto* c : conns) {
    cancelled_++;
    LuaPhase::closeConnection(*c);
  }
}

void LuaWorkerRuntime::onSweep(uv_timer_t* t) { static_cast<LuaWorkerRuntime*>(t->data)->sweep(); }

void LuaWorkerRuntime::sweep() {
  Nanos n = now();
  for (auto& r : retired_) {
    auto vm = r.vm.lock();
    if (vm && n >= r.deadline) {
      LOG_WARN("lua: a retired generation's requests passed the retire deadline; cancelling them");
      cancelRequestsOn(vm.get());
    }
  }
  retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                [&](const Retired& r) { return r.vm.expired() || n >= r.deadline; }),
                 retired_.end());
  publish(current_, generation_);
}

void LuaWorkerRuntime::publish(const lua::WorkerVmPtr& current, uint64_t generation) {
  current_ = current;
  generation_ = generation;
  LuaWorkerStats s;
  s.generation = generation;
  if (current) {
    s.memory_bytes = current->memoryBytes();
    s.policies = current->policies();
  }
  for (const auto& r : retired_) {
    if (auto vm = r.vm.lock()) {
      s.retired_vms++;
      s.retired_memory_bytes += vm->memoryBytes();
    }
  }
  s.requests_cancelled = cancelled_;
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_ = std::move(s);
}

LuaWorkerStats LuaWorkerRuntime::stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

}  // namespace sluice
