#include "proxy/server/risk_phase.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "core/clock.h"
#include "core/metrics.h"
#include "core/strings.h"
#include "proxy/cluster/cluster_limits.h"
#include "proxy/config/risk_settings.h"
#include "proxy/log/access_log.h"
#include "proxy/router/router.h"
#include "proxy/server/client_connection.h"
#include "proxy/server/explain_log.h"
#include "proxy/server/proxy_metrics.h"
#include "proxy/server/risk_headers.h"
#include "proxy/server/worker.h"
#include "proxy/upstream/balance_key.h"
#include "risk/risk_engine.h"

namespace sluice {

// Per request, in Exchange::risk. Immutable: the few distinct states are shared constants, so a
// scored request costs a reference count, not an allocation (the ids log() needs are read again
// from the request head, which stays parsed until the exchange is logged).
struct RiskExchangeState {
  enum class Endpoint : uint8_t { kNone, kPow, kVerify };
  Endpoint endpoint = Endpoint::kNone;
  bool evaluated = false;
  bool answered = false;  // this phase answered (challenge / block)
  uint8_t route_class = 0;
};

namespace {

using risk::RiskAction;

constexpr int kLevelSlots = 17;  // level 0 (none) .. 16
enum DecisionIndex { kDecAllow, kDecChallenge, kDecBlock, kDecWouldChallenge, kDecWouldBlock, kDecCount };
const char* const kDecisionNames[kDecCount] = {"allow", "challenge", "block", "monitor_challenge",
                                               "monitor_block"};
enum ChallengeResult { kIssued, kPassed, kFailed, kResultCount };
const char* const kResultNames[kResultCount] = {"issued", "passed", "failed"};

struct Runtime {
  std::once_flag once;
  std::unique_ptr<risk::RiskEngine> engine;
  size_t behaviour_memory = 0;
  size_t spent_memory = 0;

  std::atomic<const MetricsRegistry*> registry{nullptr};
  Histogram score;
  // Decisions are counted per thread and summed when scraped: one shared atomic counted by
  // every worker on every request is a locked instruction on a line the workers pass around.
  // (Not registry Counter series: the level label's names change with reloads, so the family
  // is a scrape-time callback over level slots.)
  struct DecisionCounts {
    MetricCell cells[kDecCount][kLevelSlots] = {};
  };
  std::mutex decision_counts_mu;
  std::vector<const DecisionCounts*> decision_counts;  // one per thread that scored; never freed
  uint64_t decisions(int action, int level) {
    std::lock_guard<std::mutex> lk(decision_counts_mu);
    uint64_t total = 0;
    for (const DecisionCounts* c : decision_counts)
      total += c->cells[action][level].load(std::memory_order_relaxed);
    return total;
  }
  std::atomic<uint64_t> challenges[kLevelSlots][kResultCount] = {};
  std::mutex names_mu;
  std::vector<std::string> level_names;
  std::atomic<const void*> names_of{nullptr};

  ExplainLog explain;  // GET /risk/explain
};

Runtime& runtime() {
  static Runtime* r = new Runtime;  // process-wide, never destroyed (workers may outlive main)
  return *r;
}

risk::RiskEngine& engineFor(const RiskSettings& s) {
  Runtime& rt = runtime();
  std::call_once(rt.once, [&] {
    risk::RiskStateOptions o;
    o.behaviourMemoryPerKind = s.behaviour_memory;
    o.spentMemory = s.spent_memory;
    rt.behaviour_memory = s.behaviour_memory;
    rt.spent_memory = s.spent_memory;
    rt.engine = std::make_unique<risk::RiskEngine>(o);
  });
  if (rt.names_of.load(std::memory_order_relaxed) != s.policy.get()) {
    std::lock_guard<std::mutex> lk(rt.names_mu);
    rt.level_names = s.policy->levelNames;
    rt.names_of.store(s.policy.get(), std::memory_order_relaxed);
  }
  return *rt.engine;
}

void count(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

// This thread's decision counters (only it writes them).
void countDecision(int action, int level) {
  thread_local Runtime::DecisionCounts* mine = [] {
    auto* c = new Runtime::DecisionCounts;
    Runtime& rt = runtime();
    std::lock_guard<std::mutex> lk(rt.decision_counts_mu);
    rt.decision_counts.push_back(c);
    return c;
  }();
  metricCellAdd(&mine->cells[action][level], 1);
}

// The only states there are, immortal: [answered][route class] and the two endpoints.
const RiskExchangeState* scoredState(bool answered, uint8_t route_class) {
  static const auto table = [] {
    std::array<std::array<RiskExchangeState, 8>, 2> t{};
    for (int a = 0; a < 2; a++)
      for (uint8_t c = 0; c < 8; c++)
        t[a][c] = {RiskExchangeState::Endpoint::kNone, true, a == 1, c};
    return t;
  }();
  return &table[answered ? 1 : 0][route_class & 7];
}
const RiskExchangeState* endpointState(RiskExchangeState::Endpoint e) {
  static const RiskExchangeState pow{RiskExchangeState::Endpoint::kPow, false, false, 0};
  static const RiskExchangeState verify{RiskExchangeState::Endpoint::kVerify, false, false, 0};
  return e == RiskExchangeState::Endpoint::kPow ? &pow : &verify;
}

// The item id in /item/{id}, /items/{id}, /api/item(s)/{id}/... (the limiter's default pattern).
std::string_view itemIdOf(std::string_view path) {
  if (path.rfind("/api/", 0) == 0) path.remove_prefix(4);
  if (path.rfind("/items/", 0) == 0) path.remove_prefix(7);
  else if (path.rfind("/item/", 0) == 0) path.remove_prefix(6);
  else return {};
  size_t end = path.find('/');
  return path.substr(0, end);
}

std::string urlEncode(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~' || c == '/') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

}  // namespace

// The RiskRequest view of the connection's current request (thread-local scratch: its header
// vector keeps its capacity, so scoring allocates nothing per request).
risk::RiskRequest& RiskPhase::buildRequest(ClientConnection& c, const RiskSettings& s,
                                           uint8_t route_class, std::string_view profile) {
  {
    thread_local risk::RiskRequest r;
    auto& h = c.parser_.head();
    const Config& cfg = *c.ex_->gen->gen->config;
    const bool trusted_peer = !cfg.trusted_proxies.empty() && cfg.trusted_proxies.contains(c.peer_ip_);
    r.method = h.method_name;
    r.httpMajor = static_cast<uint8_t>(h.version_major);
    r.httpMinor = static_cast<uint8_t>(h.version_minor);
    splitTarget(h.target, &r.path, &r.query);
    r.deviceId = r.memberId = {};
    // One pass over the names: the headers risk/ sees, the TLS fingerprint, the device and
    // address headers and the Cookie headers' split (proxy/server/risk_headers.h).
    const std::string_view device_from_header = collectRiskHeaders(
        h.headers, {s.tls_fingerprint_header, s.device_header, s.address_header}, trusted_peer,
        &r);
    r.clientIp = c.ex_->client_ip;
    // Cookies are split once (above): the member and device ids here, the pass token and the
    // fingerprint's cookie names in evaluate().
    if (!s.member_cookie.empty()) r.memberId = r.cookies.find(s.member_cookie);
    if (!s.device_cookie.empty()) r.deviceId = r.cookies.find(s.device_cookie);
    if (r.deviceId.empty()) r.deviceId = device_from_header;
    // Ids are opaque tokens; a hostile 8 KB one is cut rather than hashed and stored whole.
    if (r.memberId.size() > 256) r.memberId = r.memberId.substr(0, 256);
    if (r.deviceId.size() > 256) r.deviceId = r.deviceId.substr(0, 256);
    r.routeClass = static_cast<risk::RouteClass>(route_class);
    r.itemId = (r.routeClass == risk::RouteClass::kItemDetail ||
                r.routeClass == risk::RouteClass::kCheckout)
                   ? itemIdOf(r.path)
                   : std::string_view();
    r.profile = profile;
    r.wallSeconds = c.ex_->start_wall_us / 1000000;
    r.extraSignals.clear();
    return r;
  }
}

namespace {

// Records the decision for the entities evaluate() found due (risk::RiskDecision::explainDue):
// only entities whose decision changed, or whose record is older than the refresh (perf: a
// record for every scored request cost 0.57 us of user time per request on bench/risk-e2e).
void rememberForExplain(const risk::RiskRequest& r, const risk::RiskDecision& d, Nanos now) {
  if (d.score < risk::kExplainMinScore) return;
  bool any = false;
  for (bool due : d.explainDue) any = any || due;
  if (!any) return;
  const auto keys = risk::RiskEngine::entityKeys(r);
  ExplainRecord e;
  for (int k = 0; k < risk::kEntityKinds; k++)
    if (d.explainDue[k]) e.keys[k] = keys[k];  // never due for an absent entity (key 0)
  e.at = now;
  e.wall = static_cast<uint32_t>(std::max<int64_t>(r.wallSeconds, 0));
  e.score = static_cast<int16_t>(d.score);
  e.request_score = static_cast<int16_t>(d.requestScore);
  e.action = risk::explainActionOf(d);
  e.count = static_cast<uint8_t>(std::min(d.topCount, 5));
  for (int i = 0; i < e.count; i++) {
    size_t n = std::min(d.top[i].name.size(), sizeof(e.top[i].name) - 1);
    memcpy(e.top[i].name, d.top[i].name.data(), n);
    e.top[i].points = static_cast<int8_t>(std::clamp(d.top[i].points, -100, 100));
  }
  runtime().explain.append(e);
}

std::string cookieHeader(const RiskSettings& s, const std::string& token) {
  const auto& t = s.policy->config.tokens;
  return t.cookie + "=" + token + "; Path=/; Max-Age=" + std::to_string(t.ttl / kSeconds) +
         "; HttpOnly; SameSite=Lax";
}

}  // namespace

PhaseResult RiskPhase::endpoint(ClientConnection& c) {
  const Config& cfg = *c.ex_->gen->gen->config;
  if (!cfg.risk) return PhaseResult::kContinue;
  const RiskSettings& s = *cfg.risk;
  auto& h = c.parser_.head();
  const std::string& prefix = s.endpoint_prefix;
  // Nearly every request: an origin-form target outside the prefix, no split needed.
  if (targetOutsidePrefix(h.target, prefix)) return PhaseResult::kContinue;
  std::string_view path, query;
  splitTarget(h.target, &path, &query);
  if (path.size() <= prefix.size() || path.compare(0, prefix.size(), prefix) != 0 ||
      path[prefix.size()] != '/')
    return PhaseResult::kContinue;
  std::string_view sub = path.substr(prefix.size() + 1);
  LocalResponse r;
  r.content_type = "application/json";
  r.headers.emplace_back("Cache-Control", "no-store");
  RiskExchangeState::Endpoint kind = sub == "pow"      ? RiskExchangeState::Endpoint::kPow
                                     : sub == "verify" ? RiskExchangeState::Endpoint::kVerify
                                                       : RiskExchangeState::Endpoint::kNone;
  if (kind == RiskExchangeState::Endpoint::kNone) {
    r.status = 404;
    r.body = "{\"error\":\"no such endpoint\"}";
  } else if (h.method != HTTP_POST) {
    r.status = 405;
    r.body = "{\"error\":\"POST only\"}";
    r.headers.emplace_back("Allow", "POST");
  } else if (h.chunked) {
    r.status = 411;
    r.body = "{\"error\":\"Content-Length required\"}";
  } else if (h.content_length > 8192) {
    r.status = 413;
    r.body = "{\"error\":\"body too large\"}";
  } else {
    c.ex_->risk = endpointState(kind);
    return PhaseResult::kSuspended;  // requestComplete answers once the body is in
  }
  if (!c.ex_->decisions.empty()) c.ex_->decisions.push_back(',');
  c.ex_->decisions.append("\"risk\":{\"endpoint\":\"refused\"}");
  c.respondLocal(r, h.content_length > 8192 || h.chunked);
  return PhaseResult::kAnswered;
}

bool RiskPhase::requestComplete(ClientConnection& c) {
  if (!c.ex_->risk || c.ex_->risk->endpoint == RiskExchangeState::Endpoint::kNone) return false;
  const Config& cfg = *c.ex_->gen->gen->config;
  if (!cfg.risk) return false;
  const RiskSettings& s = *cfg.risk;
  const risk::RiskPolicy& policy = *s.policy;
  risk::RiskEngine& engine = engineFor(s);
  Runtime& rt = runtime();
  const Nanos now = SteadyClock::monotonicNanos();
  risk::RiskRequest& req = buildRequest(c, s, 0, {});
  std::string_view body = c.ex_->body_buffer;
  std::string_view v;
  auto field = [&](std::string_view name) -> std::string {
    return findQueryArg(body, name, &v) ? percentDecode(v) : std::string();
  };

  LocalResponse r;
  r.content_type = "application/json";
  r.headers.emplace_back("Cache-Control", "no-store");
  std::string result;
  risk::RedeemResult res;
  if (c.ex_->risk->endpoint == RiskExchangeState::Endpoint::kPow) {
    std::string ticket = field("ticket"), counter = field("counter");
    res = engine.redeemProofOfWork(policy, req, ticket, counter, now);
    result = risk::powStatusName(res.powStatus);
    if (res.ok) {
      r.status = 200;
      r.body = "{\"ok\":true,\"level\":\"" + jsonEscape(policy.levelName(res.level)) + "\"}";
      std::string ret = field("return");
      if (!ret.empty()) {
        // A form post without JavaScript: back to the page it came from (same-site paths only).
        r.status = 303;
        r.headers.emplace_back("Location", risk::safeReturnUrl(ret));
      }
    } else {
      r.status = res.replayed ? 409 : res.powStatus == risk::PowStatus::kExpired ? 410 : 403;
      r.body = "{\"ok\":false,\"error\":\"" + result + "\"}";
    }
    if (res.ok || res.powStatus == risk::PowStatus::kBadSolution) {
      uint8_t lvl = res.level < kLevelSlots ? res.level : 0;
      count(rt.challenges[lvl][res.ok ? kPassed : kFailed]);
    }
  } else {
    std::string ticket = field("ticket"), level = field("level"), subject = field("subject"),
                outcome = field("result");
    std::string_view ts_text, sig;
    auto& h = c.parser_.head();
    h.headers.get("x-sluice-timestamp", &ts_text);
    h.headers.get("x-sluice-signature", &sig);
    int64_t ts = 0;
    bool ts_ok = !ts_text.empty() && ts_text.size() <= 18;
    for (char ch : ts_text) {
      if (ch < '0' || ch > '9') ts_ok = false;
      else ts = ts * 10 + (ch - '0');
    }
    if (!policy.verifierKey) {
      r.status = 501;
      result = "no_verifier_secret";
      r.body = "{\"ok\":false,\"error\":\"no verifier secret is configured\"}";
    } else if (!ts_ok || (outcome != "pass" && outcome != "fail") || ticket.empty()) {
      r.status = 401;
      result = "malformed";
      r.body = "{\"ok\":false,\"error\":\"malformed\"}";
    } else {
      risk::VerifierReport rep;
      rep.timestamp = ts;
      rep.ticket = ticket;
      rep.level = level;
      rep.subject = subject;
      rep.passed = outcome == "pass";
      res = engine.redeemVerifierReport(policy, req, rep, trim(sig), now);
      result = res.replayed ? "replayed" : risk::verifierStatusName(res.verifierStatus);
      if (res.replayed) {
        r.status = 409;
      } else if (res.verifierStatus == risk::VerifierStatus::kStale) {
        r.status = 408;
      } else if (res.verifierStatus != risk::VerifierStatus::kOk) {
        r.status = 401;
      } else {
        r.status = 200;
      }
      if (res.ok) {
        r.body = "{\"ok\":true,\"level\":\"" + jsonEscape(policy.levelName(res.level)) + "\"}";
      } else {
        r.body = "{\"ok\":false,\"error\":\"" + result + "\"}";
        if (r.status == 200) result = "fail";
      }
      if (res.verifierStatus == risk::VerifierStatus::kOk && !res.replayed) {
        uint8_t lvl = res.level < kLevelSlots ? res.level : 0;
        count(rt.challenges[lvl][res.ok ? kPassed : kFailed]);
      }
    }
  }
  const char* endpoint = c.ex_->risk->endpoint == RiskExchangeState::Endpoint::kPow ? "pow" : "verify";
  auto answer = [endpoint](ClientConnection& conn, LocalResponse& resp, const std::string& token,
                           const std::string& outcome, const RiskSettings& settings) {
    if (!token.empty()) resp.headers.emplace_back("Set-Cookie", cookieHeader(settings, token));
    if (!conn.ex_->decisions.empty()) conn.ex_->decisions.push_back(',');
    conn.ex_->decisions.append(std::string("\"risk\":{\"endpoint\":\"") + endpoint +
                               "\",\"result\":\"" + jsonEscape(outcome) + "\"}");
    conn.respondLocal(resp, false);
  };
  if (res.ok && !res.spentId.empty()) {
    // Single use across instances: the same solved ticket redeemed on another instance
    // (before or at the same time) gets no second token. Redis away: this instance's spent
    // set already held, so the redemption stands (fail open).
    const int64_t ttl_ms = std::max<int64_t>(1000, (res.spentUntilUnix - req.wallSeconds) * 1000);
    auto settings = cfg.risk;  // keeps the settings alive for the callback
    auto shared = std::make_shared<std::pair<LocalResponse, std::string>>(std::move(r), res.token);
    if (ClusterPhase::spendOnce(c, res.spentId, ttl_ms,
                                [answer, shared, settings, result](ClientConnection& conn,
                                                                   ClusterPhase::SpendResult sr) {
          LocalResponse& resp = shared->first;
          if (sr == ClusterPhase::SpendResult::kAlreadySpent) {
            LocalResponse replay;
            replay.status = 409;
            replay.content_type = "application/json";
            replay.headers.emplace_back("Cache-Control", "no-store");
            replay.body = "{\"ok\":false,\"error\":\"replayed\"}";
            answer(conn, replay, std::string(), "replayed_cluster", *settings);
            return;
          }
          answer(conn, resp, shared->second,
                 sr == ClusterPhase::SpendResult::kFirst ? result : result + "_redis_down", *settings);
        }))
      return true;
    r = std::move(shared->first);
  }
  answer(c, r, res.ok ? res.token : std::string(), result, s);
  return true;
}

PhaseResult RiskPhase::run(ClientConnection& c, const RouteConfig& route) {
  const Config& cfg = *c.ex_->gen->gen->config;
  if (!cfg.risk) return PhaseResult::kContinue;
  const RiskSettings& s = *cfg.risk;
  if (!route.risk_enabled) {
    // Still never forward a TLS fingerprint an untrusted client made up.
    if (!s.tls_fingerprint_header.empty() &&
        !(cfg.trusted_proxies.contains(c.peer_ip_)))
      c.parser_.head().headers.removeAll(s.tls_fingerprint_header);
    return PhaseResult::kContinue;
  }
  const risk::RiskPolicy& policy = *s.policy;
  risk::RiskEngine& engine = engineFor(s);
  Runtime& rt = runtime();
  risk::RiskRequest& req = buildRequest(c, s, route.risk_class, route.risk_profile);
  // Points the route's rewrite policies added (sluice.risk.add): scored and explained with the rest.
  if (const auto* lua = LuaPhase::riskSignals(*c.ex_))
    for (const auto& [name, points] : *lua) req.extraSignals.push_back({name, points});
  const Nanos now = SteadyClock::monotonicNanos();
  risk::RiskDecision d = engine.evaluate(policy, req, now);
  c.ex_->risk_score = static_cast<int16_t>(d.score);
  c.ex_->risk_request_score = static_cast<int16_t>(d.requestScore);
  std::memcpy(c.ex_->fingerprint, d.fingerprint.data(), sizeof c.ex_->fingerprint);
  c.ex_->fingerprint_set = true;


  // Metrics.
  if (rt.registry.load(std::memory_order_relaxed))
    rt.score.observe(ProxyMetrics::shardOf(c.worker_->id()), d.score);
  const uint8_t lvl = d.level < kLevelSlots ? d.level : 0;
  const uint8_t wlvl = d.wouldLevel < kLevelSlots ? d.wouldLevel : 0;
  int dec = d.action == RiskAction::kChallenge ? kDecChallenge
            : d.action == RiskAction::kBlock   ? kDecBlock
                                               : kDecAllow;
  countDecision(dec, lvl);
  if (d.monitor && d.wouldAction != RiskAction::kAllow)
    countDecision(d.wouldAction == RiskAction::kBlock ? kDecWouldBlock : kDecWouldChallenge, wlvl);

  // Access log: score, action/level, what monitor mode would have done, top signals.
  if (AccessLog* al = c.worker_->accessLog(); al && al->enabled()) {
  std::string& log = c.ex_->decisions;
  if (!log.empty()) log.push_back(',');
  log.append("\"risk\":{\"score\":");
  log.append(std::to_string(d.score));
  log.append(",\"action\":\"");
  log.append(risk::riskActionName(d.action));
  log.push_back('"');
  if (d.level) {
    log.append(",\"level\":\"");
    log.append(jsonEscape(d.levelName));
    log.push_back('"');
  }
  if (d.monitor) {
    log.append(",\"monitor\":true,\"would\":\"");
    log.append(d.wouldAction == RiskAction::kChallenge ? jsonEscape(d.wouldLevelName)
                                                       : risk::riskActionName(d.wouldAction));
    log.push_back('"');
  }
  if (d.tokenStatus != risk::TokenStatus::kAbsent) {
    log.append(",\"token\":\"");
    log.append(risk::tokenStatusName(d.tokenStatus));
    log.push_back('"');
  }
  if (d.topCount > 0) {
    log.append(",\"top\":[");
    for (int i = 0; i < d.topCount; i++) {
      if (i) log.push_back(',');
      log.push_back('"');
      log.append(jsonEscape(d.top[i].name));
      log.push_back(':');
      log.append(std::to_string(d.top[i].points));
      log.push_back('"');
    }
    log.push_back(']');
  }
  log.push_back('}');
  }
  rememberForExplain(req, d, now);

  if (d.action == RiskAction::kAllow) {
    c.ex_->risk = scoredState(false, route.risk_class);
    return PhaseResult::kContinue;
  }
  c.ex_->risk = scoredState(true, route.risk_class);

  // Challenge or block: answered here. API/XHR callers get JSON, browsers a page.
  auto& h = c.parser_.head();
  std::string_view accept = h.headers.getOr("accept");
  const bool wants_json = (accept.find("application/json") != std::string_view::npos &&
                           accept.find("text/html") == std::string_view::npos) ||
                          h.headers.count("x-requested-with") > 0 ||
                          route.risk_class == static_cast<uint8_t>(risk::RouteClass::kApi);
  LocalResponse r;
  r.headers.emplace_back("Cache-Control", "no-store");
  if (d.action == RiskAction::kBlock) {
    r.status = 403;
    if (wants_json) {
      r.content_type = "application/json";
      r.body = "{\"error\":\"blocked\"}";
    } else {
      r.body = "Forbidden\n";
    }
    c.respondLocal(r, false);
    return PhaseResult::kAnswered;
  }
  count(rt.challenges[lvl][kIssued]);
  const std::string verify_url = s.endpoint_prefix + (d.powDifficulty > 0 ? "/pow" : "/verify");
  if (!wants_json && d.powDifficulty > 0 && policy.tickets) {
    risk::ChallengeTicket t;
    policy.tickets->open(d.ticket, nullptr, req.wallSeconds, &t);
    r.status = s.challenge_status;
    r.content_type = "text/html; charset=utf-8";
    r.body = risk::proofOfWorkPage(d.ticket, t, verify_url, risk::safeReturnUrl(h.target));
    r.headers.emplace_back("Content-Security-Policy",
                           "default-src 'none'; script-src 'unsafe-inline'; style-src "
                           "'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'");
  } else if (!wants_json && !s.challenge_url.empty()) {
    r.status = 302;
    r.body.clear();
    std::string loc = s.challenge_url;
    loc += loc.find('?') == std::string::npos ? '?' : '&';
    loc += "return=" + urlEncode(risk::safeReturnUrl(h.target)) + "&level=" +
           urlEncode(d.levelName) + "&ticket=" + d.ticket;
    r.headers.emplace_back("Location", loc);
  } else {
    r.status = s.challenge_status;
    r.content_type = "application/json";
    r.body = "{\"challenge\":\"" + jsonEscape(d.levelName) + "\",\"ticket\":\"" + d.ticket +
             "\",\"verify_url\":\"" + jsonEscape(verify_url) + "\"";
    if (d.powDifficulty > 0) r.body += ",\"difficulty\":" + std::to_string(d.powDifficulty);
    r.body += "}";
  }
  c.respondLocal(r, false);
  return PhaseResult::kAnswered;
}

bool RiskPhase::addPoints(ClientConnection& c, std::string_view signal, int points) {
  Exchange& e = *c.ex_;
  if (e.risk_score < 0) return false;
  const Config& cfg = *e.gen->gen->config;
  if (!cfg.risk) return false;
  e.risk_score = static_cast<int16_t>(std::clamp(e.risk_score + points, 0, 100));
  e.risk_request_score = static_cast<int16_t>(std::clamp(e.risk_request_score + points, 0, 100));
  if (e.risk_added.size() < 1024) {  // the access log's record of them, bounded
    if (!e.risk_added.empty()) e.risk_added.push_back(',');
    e.risk_added.append("\"lua.");
    e.risk_added.append(signal);  // a plain token (api.cc checks)
    e.risk_added.push_back(':');
    e.risk_added.append(std::to_string(points));
    e.risk_added.push_back('"');
  }
  if (points > 0) {
    const RiskExchangeState* st = e.risk;
    risk::RiskRequest& r = buildRequest(c, *cfg.risk, st ? st->route_class : 0, {});
    engineFor(*cfg.risk).raiseScore(*cfg.risk->policy, r, e.risk_request_score,
                                    SteadyClock::monotonicNanos());
  }
  return true;
}

static_assert(sizeof(Exchange::fingerprint) == risk::FingerprintText::kSize);

std::string_view RiskPhase::fingerprint(ClientConnection& c) {
  Exchange& e = *c.ex_;
  if (!e.fingerprint_set) {
    // The headers the risk phase would read: the TLS fingerprint header and a trusted hop's own
    // headers are not the client's.
    const Config& cfg = *e.gen->gen->config;
    risk::HeaderOrderFingerprint fp;
    if (cfg.risk) {
      fp = risk::HeaderOrderFingerprint::compute(buildRequest(c, *cfg.risk, 0, {}));
    } else {
      thread_local std::vector<risk::HeaderField> headers;
      headers.clear();
      const auto& h = c.parser_.head();
      for (size_t i = 0; i < h.headers.size(); i++)
        if (!h.headers.removed(i)) headers.emplace_back(h.headers.name(i), h.headers.value(i));
      fp = risk::HeaderOrderFingerprint::compute(h.method_name, static_cast<uint8_t>(h.version_major),
                                                 static_cast<uint8_t>(h.version_minor), headers);
    }
    std::memcpy(e.fingerprint, fp.text.data(), sizeof e.fingerprint);
    e.fingerprint_set = true;
  }
  return {e.fingerprint, sizeof e.fingerprint};
}

void RiskPhase::log(ClientConnection& c) {
  if (!c.ex_->risk_added.empty()) {
    std::string& log = c.ex_->decisions;
    if (!log.empty()) log.push_back(',');
    log.append("\"risk_added\":{\"score\":" + std::to_string(c.ex_->risk_score) + ",\"signals\":[" +
               c.ex_->risk_added + "]}");
  }
  const RiskExchangeState* st = c.ex_->risk;
  if (!st || !st->evaluated || st->answered) return;
  // Only a refused checkout/API call (401/403 from the storefront) changes state.
  if (c.ex_->status != 401 && c.ex_->status != 403) return;
  const Config& cfg = *c.ex_->gen->gen->config;
  if (!cfg.risk) return;
  if (!c.parser_.headersDone()) return;
  risk::RiskRequest& r = buildRequest(c, *cfg.risk, st->route_class, {});
  engineFor(*cfg.risk).recordOutcome(*cfg.risk->policy, r, c.ex_->status,
                                     SteadyClock::monotonicNanos());
}

std::pair<int, std::string> RiskPhase::explain(const Config& cfg, std::string_view query) {
  if (!cfg.risk) return {404, "{\"error\":\"risk is not enabled\"}"};
  const RiskSettings& s = *cfg.risk;
  risk::RiskEngine& engine = engineFor(s);
  std::string_view v;
  risk::EntityKind kind;
  uint64_t key = 0;
  std::string id, kind_name;
  if (findQueryArg(query, "ip", &v)) {
    id = percentDecode(v);
    IpAddress ip;
    if (!IpAddress::parse(id, &ip)) return {400, "{\"error\":\"ip= is not an IP address\"}"};
    kind = risk::EntityKind::kIp;
    key = risk::RiskEngine::ipKey(ip);
    kind_name = "ip";
  } else if (findQueryArg(query, "device", &v)) {
    id = percentDecode(v);
    kind = risk::EntityKind::kDevice;
    key = risk::RiskEngine::deviceKey(id);
    kind_name = "device";
  } else if (findQueryArg(query, "member", &v)) {
    id = percentDecode(v);
    kind = risk::EntityKind::kMember;
    key = risk::RiskEngine::memberKey(id);
    kind_name = "member";
  } else {
    return {400, "{\"error\":\"give one of ip=, device=, member=\"}"};
  }
  if (key == 0) return {400, "{\"error\":\"empty id\"}"};
  std::string out = "{\"" + kind_name + "\":\"" + jsonEscape(id) + "\"";
  risk::EntityState es;
  const Nanos now = SteadyClock::monotonicNanos();
  const auto& pc = s.policy->config;
  if (engine.behaviour().read(kind, key, &es) && es.lastSeenMs != 0) {
    float decayed = risk::BehaviourTracker::decay(es.score, es.scoreAt, risk::secondsTick(now),
                                                  pc.scoreHalfLife);
    char buf[256];
    snprintf(buf, sizeof(buf),
             ",\"known\":true,\"score\":%d,\"seen_seconds_ago\":%lld,\"escalation\":%u,"
             "\"attempts\":%u,\"failures\":%u,\"pending_level\":\"%s\"",
             static_cast<int>(decayed),
             static_cast<long long>((now / kMillis + 1 - static_cast<int64_t>(es.lastSeenMs)) / 1000),
             es.ladder.escalation, es.ladder.attempts, es.ladder.failures,
             jsonEscape(s.policy->levelName(es.ladder.pendingLevel)).c_str());
    out += buf;
  } else {
    out += ",\"known\":false,\"score\":0";
  }
  Runtime& rt = runtime();
  ExplainRecord e;
  if (rt.explain.find(static_cast<int>(kind), key, &e)) {
    out += ",\"last\":{\"score\":" + std::to_string(e.score) +
           ",\"request_score\":" + std::to_string(e.request_score) + ",\"action\":\"" +
           risk::kExplainActionNames[e.action < std::size(risk::kExplainActionNames) ? e.action : 0] + "\",\"unix\":" + std::to_string(e.wall) + ",\"top\":[";
    for (int i = 0; i < e.count; i++) {
      if (i) out += ",";
      out += "{\"signal\":\"" + jsonEscape(e.top[i].name) + "\",\"points\":" +
             std::to_string(e.top[i].points) + "}";
    }
    out += "]}";
  } else {
    out += ",\"last\":null";
  }
  out += "}";
  return {200, out};
}

risk::RiskEngine* RiskPhase::engine(const Config& cfg) {
  return cfg.risk ? &engineFor(*cfg.risk) : nullptr;
}

risk::ListOverlay* RiskPhase::listOverlay(const Config& cfg) {
  if (!cfg.risk) return nullptr;
  return &engineFor(*cfg.risk).listOverlay();
}

std::string RiskPhase::statusJson(const Config& cfg) {
  if (!cfg.risk) return "{\"enabled\":false}";
  const RiskSettings& s = *cfg.risk;
  const auto& pc = s.policy->config;
  std::string out = "{\"enabled\":true,\"secret\":\"" + jsonEscape(s.secret_source) +
                    "\",\"levels\":[";
  for (size_t i = 0; i < s.policy->levelNames.size(); i++) {
    if (i) out += ",";
    out += "{\"name\":\"" + jsonEscape(s.policy->levelNames[i]) +
           "\",\"pow_bits\":" + std::to_string(s.policy->levelDifficulty[i]) + "}";
  }
  out += "],\"profiles\":[";
  for (size_t i = 0; i < pc.profiles.size(); i++) {
    if (i) out += ",";
    out += "{\"name\":\"" + jsonEscape(pc.profiles[i].name) +
           "\",\"monitor\":" + (pc.profiles[i].monitor ? "true" : "false") + "}";
  }
  out += "],\"lists\":" + std::to_string(pc.lists.size()) +
         ",\"geoip_databases\":" + std::to_string(s.policy->geoip.size()) +
         ",\"endpoint_prefix\":\"" + jsonEscape(s.endpoint_prefix) + "\"}";
  return out;
}

void RiskPhase::registerMetrics(MetricsRegistry& registry) {
  Runtime& rt = runtime();
  std::vector<double> bounds;
  for (int b = 10; b <= 100; b += 10) bounds.push_back(b);
  rt.score = registry
                 .histogram("sluice_risk_score",
                            "Risk score (0..100) of every request the risk phase scored.", {},
                            bounds, 1.0)
                 .with({});
  rt.registry.store(&registry, std::memory_order_relaxed);
  auto levelName = [&rt](int lvl) {
    std::lock_guard<std::mutex> lk(rt.names_mu);
    if (lvl == 0) return std::string("none");
    return lvl <= static_cast<int>(rt.level_names.size()) ? rt.level_names[lvl - 1]
                                                          : "level" + std::to_string(lvl);
  };
  registry.callback(
      "sluice_risk_decisions_total",
      "Risk phase decisions by action (allow, challenge, block; monitor_challenge and "
      "monitor_block: what a monitor profile would have done) and challenge level.",
      MetricType::kCounter, {"action", "level"}, [&rt, levelName](MetricSampleSink& sink) {
        for (int a = 0; a < kDecCount; a++)
          for (int l = 0; l < kLevelSlots; l++) {
            uint64_t v = rt.decisions(a, l);
            if (v || (l == 0 && a == kDecAllow)) sink.add({kDecisionNames[a], levelName(l)}, static_cast<double>(v));
          }
      });
  registry.callback(
      "sluice_risk_challenges_total",
      "Challenges by level and result: issued (answered with a challenge), passed and failed "
      "(proof-of-work solutions and verifier reports).",
      MetricType::kCounter, {"level", "result"}, [&rt, levelName](MetricSampleSink& sink) {
        for (int l = 0; l < kLevelSlots; l++)
          for (int x = 0; x < kResultCount; x++) {
            uint64_t v = rt.challenges[l][x].load(std::memory_order_relaxed);
            if (v) sink.add({levelName(l), kResultNames[x]}, static_cast<double>(v));
          }
      });
}

}  // namespace sluice
