#include "proxy/admin/admin.h"

#include <cctype>
#include <cstdio>
#include <cstring>

#include "core/clock.h"
#include "core/jwt.h"
#include "core/log.h"
#include "core/strings.h"
#include "proxy/admin/dashboard.h"
#include "proxy/admin/lists_admin.h"
#include "proxy/cluster/cluster_limits.h"
#include "proxy/cluster/risk_sync.h"
#include "proxy/limit/limit_set.h"
#include "proxy/router/router.h"
#include "proxy/server/controls.h"
#include "proxy/server/proxy_metrics.h"
#include "proxy/server/risk_phase.h"
#include "proxy/server/server.h"
#include "proxy/upstream/upstream_cluster.h"

namespace sluice {

namespace {

LocalResponse json(int status, std::string body) {
  LocalResponse r;
  r.status = status;
  r.content_type = "application/json";
  r.body = std::move(body);
  r.body.push_back('\n');
  return r;
}

LocalResponse jsonError(int status, const std::string& message) {
  return json(status, "{\"error\":\"" + jsonEscape(message) + "\"}");
}

// Constant-time comparison: the token must not leak through response timing.
bool tokenMatches(std::string_view given, const std::string& expected) {
  if (expected.empty() || given.size() != expected.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < given.size(); i++)
    diff |= static_cast<unsigned char>(given[i] ^ expected[i]);
  return diff == 0;
}

bool authorized(const HttpMessageHead& head, const Config& cfg) {
  std::string_view auth;
  if (!head.headers.get("authorization", &auth)) return false;
  auth = trim(auth);
  if (auth.size() < 7 || !equalsIgnoreCase(auth.substr(0, 7), "bearer ")) return false;
  return tokenMatches(trim(auth.substr(7)), cfg.admin.token);
}

std::string statusJson(Server* server) {
  auto gen = server->generation();
  char buf[512];
  snprintf(buf, sizeof(buf),
           "{\"version\":\"%s\",\"uptime_seconds\":%.3f,\"workers\":%zu,\"generation\":%llu,"
           "\"config_hash\":\"%s\",\"config_path\":\"%s\",\"requests_total\":%llu,"
           "\"last_reload\":\"",
           SLUICE_VERSION, (wallMicros() - server->startedAtUs()) / 1e6, server->workerCount(),
           static_cast<unsigned long long>(gen->id), gen->config->hash.c_str(),
           jsonEscape(gen->config->source_path).c_str(),
           static_cast<unsigned long long>(server->requestsServed()));
  // The reload result is a free-form, possibly long, multi-line message: escaped, not truncated.
  return buf + jsonEscape(server->lastReloadResult()) + "\"}";
}

std::string upstreamsJson(Server* server) {
  auto gen = server->generation();
  Nanos now = SteadyClock::monotonicNanos();
  std::string out = "{\"upstreams\":[";
  for (size_t u = 0; u < gen->clusters.size(); u++) {
    auto& c = *gen->clusters[u];
    if (u) out += ',';
    out += "{\"name\":\"" + jsonEscape(c.config().name) + "\",\"servers\":[";
    for (size_t i = 0; i < c.size(); i++) {
      const auto& s = c.server(i);
      if (i) out += ',';
      char buf[384];
      snprintf(buf, sizeof(buf),
               "{\"address\":\"%s\",\"weight\":%u,\"healthy\":%s,\"ejected\":%s,\"active\":%d,"
               "\"requests\":%llu,\"failures\":%llu}",
               s.address.c_str(), s.config.weight, s.healthy.load() ? "true" : "false",
               s.ejected_until.load() > now ? "true" : "false", s.active.load(),
               static_cast<unsigned long long>(s.requests.load()),
               static_cast<unsigned long long>(s.failures.load()));
      out += buf;
    }
    out += "]}";
  }
  out += "]}";
  return out;
}

const char* algorithmName(LimitAlgorithm a) {
  switch (a) {
    case LimitAlgorithm::kLeakyBucket: return "leaky_bucket";
    case LimitAlgorithm::kSlidingWindow: return "sliding_window";
    case LimitAlgorithm::kConcurrency: return "concurrency";
    case LimitAlgorithm::kCircuitBreaker: return "circuit_breaker";
  }
  return "?";
}

const char* actionName(LimitAction a) {
  switch (a) {
    case LimitAction::kReject: return "reject";
    case LimitAction::kDelay: return "delay";
    case LimitAction::kDegrade: return "degrade";
    case LimitAction::kShadow: return "shadow";
    case LimitAction::kRedirect: return "redirect";
  }
  return "?";
}

// GET /limits: every rule of the serving generation with its live keys and decision counters
// (counters are cumulative since the process started, across reloads).
std::string limitsJson(Server* server) {
  auto gen = server->generation();
  Nanos now = SteadyClock::monotonicNanos();
  std::string out = "{\"rules\":[";
  for (size_t i = 0; i < gen->limits->size(); i++) {
    const auto& rt = gen->limits->rule(i);
    const auto& rc = *rt.config;
    if (i) out += ',';
    out += "{\"id\":\"" + jsonEscape(rc.id) + "\",\"key\":\"" + jsonEscape(rc.key_signature) +
           "\",\"algorithm\":\"" + algorithmName(rc.algorithm) + "\",\"action\":\"" +
           actionName(rc.action) + "\",\"mode_override\":\"" +
           ruleModeOverrideName(static_cast<RuleModeOverride>(rt.mode_override->load())) +
           "\",\"live_keys\":" + std::to_string(rt.liveKeys(now)) +
           ",\"memory_bytes\":" + std::to_string(rc.memory);
    const limiter::KeyTableStats ts = rt.tableStats();
    out += ",\"table\":{\"inserts\":" + std::to_string(ts.inserts) +
           ",\"evicted_idle\":" + std::to_string(ts.evictedIdle) +
           ",\"evicted_active\":" + std::to_string(ts.evictedActive) +
           ",\"inserts_refused\":" + std::to_string(ts.insertsRefused) + "},\"decisions\":{";
    for (int a = 0; a < 6; a++) {
      uint64_t n = server->metrics() ? server->metrics()->limitDecisions(rc.id, kLimitActions[a]) : 0;
      out += std::string(a ? "," : "") + "\"" + kLimitActions[a] + "\":" + std::to_string(n);
    }
    out += "}}";
  }
  out += "]}";
  return out;
}

// GET /limits/hot-items: what the hot-item sketch marks hot now, hottest first, and the other
// candidates it tracks (an operator watches items approach the threshold).
std::string hotItemsJson(Server* server) {
  auto gen = server->generation();
  const auto* sketch = gen->limits->hotItems();
  if (!sketch) return "{\"enabled\":false,\"hot\":[],\"candidates\":[]}";
  Nanos now = SteadyClock::monotonicNanos();
  auto list = [](const std::vector<limiter::HotItem>& items) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); i++) {
      char buf[96];
      snprintf(buf, sizeof(buf), "\",\"rate\":%.2f,\"count\":%llu}", items[i].rate,
               static_cast<unsigned long long>(items[i].count));
      out += std::string(i ? "," : "") + "{\"item\":\"" + jsonEscape(items[i].item) + buf;
    }
    return out + "]";
  };
  const auto& p = sketch->params();
  char head[160];
  snprintf(head, sizeof(head), "{\"enabled\":true,\"hot_rate\":%.2f,\"window_seconds\":%.3f,\"hot\":",
           p.hotRate, static_cast<double>(p.window) / kSeconds);
  std::vector<limiter::HotItem> cold;
  for (auto& it : sketch->topK(now))
    if (!it.hot) cold.push_back(it);
  return head + list(sketch->hotList(now)) + ",\"candidates\":" + list(cold) + "}";
}

std::string cacheJson(Server* server) {
  auto st = server->generation()->cache->stats();
  char buf[512];
  snprintf(buf, sizeof(buf),
           "{\"hits\":%llu,\"misses\":%llu,\"stale\":%llu,\"coalesced\":%llu,\"stores\":%llu,"
           "\"evictions\":%llu,\"expired\":%llu,\"purged\":%llu,\"bytes\":%llu,\"entries\":%llu,"
           "\"capacity_bytes\":%zu,\"in_flight\":%llu}",
           (unsigned long long)st.hits, (unsigned long long)st.misses, (unsigned long long)st.stale,
           (unsigned long long)st.coalescing.coalesced, (unsigned long long)st.stores,
           (unsigned long long)st.evictions, (unsigned long long)st.expired, (unsigned long long)st.purged,
           (unsigned long long)st.bytes, (unsigned long long)st.entries,
           server->generation()->cache->capacityBytes(), (unsigned long long)st.coalescing.in_flight);
  return buf;
}

// POST /cache/purge {"key": CANONICAL} or {"prefix": PREFIX} (docs/caching.md, "Keys").
LocalResponse cachePurge(Server* server, std::string_view body) {
  std::string key, prefix;
  bool has_key = jwtClaim(body, "key", &key);  // a top-level string member of a JSON object
  bool has_prefix = jwtClaim(body, "prefix", &prefix);
  if (has_key == has_prefix)
    return jsonError(400, "expected a JSON object with exactly one of \"key\" or \"prefix\"");
  auto& cache = *server->generation()->cache;
  size_t n = has_key ? cache.purge(key) : cache.purgePrefix(prefix);
  LOG_INFO("admin: cache purge %s '%s': %zu responses", has_key ? "key" : "prefix",
           (has_key ? key : prefix).c_str(), n);
  return json(200, "{\"purged\":" + std::to_string(n) + "}");
}

// POST /rules/{id}/mode {"mode": "enforce" | "shadow" | "off" | "config"}: takes effect on every
// worker at the next request (one relaxed load), holds across reloads until set back to config.
LocalResponse setRuleMode(Server* server, std::string_view id, std::string_view body) {
  auto gen = server->generation();
  bool known = false;
  for (size_t i = 0; i < gen->limits->size(); i++)
    if (gen->limits->rule(i).config->id == id) known = true;
  if (!known) return jsonError(404, "no limit rule '" + std::string(id) + "' in the running configuration");
  std::string mode;
  RuleModeOverride m;
  if (!jsonMember(body, "mode", &mode) || !parseRuleModeOverride(mode, &m))
    return jsonError(400, "expected {\"mode\": \"enforce\" | \"shadow\" | \"off\" | \"config\"}");
  Controls::ruleMode(std::string(id))->store(static_cast<uint8_t>(m));
  LOG_WARN("admin: limit rule %.*s mode set to %s", static_cast<int>(id.size()), id.data(),
           ruleModeOverrideName(m));
  return json(200, "{\"rule\":\"" + jsonEscape(id) + "\",\"mode\":\"" + ruleModeOverrideName(m) + "\"}");
}

std::string degradeJson(Server* server) {
  auto gen = server->generation();
  std::string out = "{\"switches\":[";
  const auto& sws = gen->config->degrade_switches;
  for (size_t i = 0; i < sws.size(); i++) {
    if (i) out += ',';
    out += "{\"name\":\"" + jsonEscape(sws[i].name) + "\",\"on\":" +
           (gen->degrade_switches[i]->load() ? "true" : "false") + ",\"routes\":[";
    for (size_t j = 0; j < sws[i].routes.size(); j++)
      out += std::string(j ? "," : "") + "\"" + jsonEscape(sws[i].routes[j]) + "\"";
    out += "]}";
  }
  return out + "]}";
}

// POST /degrade/{name} {"on": true | false}
LocalResponse setDegradeSwitch(Server* server, std::string_view name, std::string_view body) {
  auto gen = server->generation();
  bool known = false;
  for (const auto& sw : gen->config->degrade_switches)
    if (sw.name == name) known = true;
  if (!known) return jsonError(404, "no degrade switch '" + std::string(name) + "' in the running configuration");
  std::string on;
  if (!jsonMember(body, "on", &on) || (on != "true" && on != "false"))
    return jsonError(400, "expected {\"on\": true | false}");
  Controls::degradeSwitch(std::string(name))->store(on == "true");
  LOG_WARN("admin: degrade switch %.*s turned %s", static_cast<int>(name.size()), name.data(),
           on == "true" ? "on" : "off");
  return json(200, "{\"name\":\"" + jsonEscape(name) + "\",\"on\":" + on + "}");
}

// GET /config: the serving configuration file, with every secret's value replaced. Values of
// keys named like a secret are redacted wherever they appear (block or flow style).
std::string redactSecrets(const std::string& yaml) {
  static const char* kSecretKeys[] = {"token", "hs256_secret", "password", "master_secret", "secret"};
  std::string out;
  out.reserve(yaml.size());
  size_t i = 0;
  while (i < yaml.size()) {
    bool matched = false;
    for (const char* k : kSecretKeys) {
      size_t n = strlen(k);
      bool boundary = i == 0 || !(isalnum(static_cast<unsigned char>(yaml[i - 1])) || yaml[i - 1] == '_');
      if (boundary && yaml.compare(i, n, k) == 0 && i + n < yaml.size() && yaml[i + n] == ':') {
        out.append(yaml, i, n + 1);
        size_t j = i + n + 1;
        while (j < yaml.size() && yaml[j] == ' ') out.push_back(yaml[j++]);
        size_t end = j;
        while (end < yaml.size() && yaml[end] != '\n' && yaml[end] != ',' && yaml[end] != '}') end++;
        if (end > j) out.append("\"<redacted>\"");
        i = end;
        matched = true;
        break;
      }
    }
    if (!matched) out.push_back(yaml[i++]);
  }
  return out;
}

LocalResponse configJson(Server* server) {
  auto gen = server->generation();
  std::string text;
  if (FILE* f = fopen(gen->config->source_path.c_str(), "rb")) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
    fclose(f);
  }
  // The file may have been edited since it was loaded: say which version this is.
  return json(200, "{\"path\":\"" + jsonEscape(gen->config->source_path) + "\",\"loaded_hash\":\"" +
                       gen->config->hash + "\",\"generation\":" + std::to_string(gen->id) +
                       ",\"workers\":" + std::to_string(gen->config->workers) + ",\"yaml\":\"" +
                       jsonEscape(redactSecrets(text)) + "\"}");
}

// GET /dashboard (and /): the operator page. It only reads the JSON endpoints and sends the
// mutating calls with the token the operator types in; the CSP keeps it from loading anything.
LocalResponse dashboardPage() {
  LocalResponse r;
  r.content_type = "text/html; charset=utf-8";
  r.body = std::string(dashboardHtml());
  r.headers.emplace_back("Cache-Control", "no-store");
  r.headers.emplace_back("X-Frame-Options", "DENY");
  r.headers.emplace_back("Content-Security-Policy",
                         "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                         "connect-src 'self'; img-src data:; frame-ancestors 'none'");
  return r;
}

}  // namespace

LocalResponse handleAdminRequest(Server* server, const HttpMessageHead& head,
                                 std::string_view body) {
  std::string_view path, query;
  splitTarget(head.target, &path, &query);
  const Config& cfg = *server->generation()->config;
  bool read = head.method == HTTP_GET || head.method == HTTP_HEAD;
  if (!read) {
    if (cfg.admin.token.empty())
      return jsonError(403, "mutating admin calls are disabled: no admin token configured");
    if (!authorized(head, cfg)) {
      LocalResponse r = jsonError(401, "a valid bearer token is required");
      r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"sluice-admin\"");
      return r;
    }
  }
  if (path == "/status" && read) return json(200, statusJson(server));
  if (path == "/upstreams" && read) return json(200, upstreamsJson(server));
  if (path == "/limits" && read) return json(200, limitsJson(server));
  if (path == "/config" && read) return configJson(server);
  if (path == "/degrade" && read) return json(200, degradeJson(server));
  if (path.rfind("/degrade/", 0) == 0 && head.method == HTTP_POST)
    return setDegradeSwitch(server, path.substr(9), body);
  if (path.rfind("/rules/", 0) == 0 && path.size() > 12 && path.substr(path.size() - 5) == "/mode" &&
      head.method == HTTP_POST)
    return setRuleMode(server, path.substr(7, path.size() - 12), body);
  if (path == "/lua" && read) return json(200, server->luaStatusJson());
  if (path == "/cache" && read) return json(200, cacheJson(server));
  if (path == "/cache/purge" && head.method == HTTP_POST) return cachePurge(server, body);
  if (path == "/limits/hot-items" && read) return json(200, hotItemsJson(server));
  if (path == "/risk" && read) {
    std::string out = RiskPhase::statusJson(cfg);
    out.insert(out.size() - 1, ",\"cluster_sync\":" + RiskSync::statusJson());
    return json(200, out);
  }
  if (path == "/risk/explain" && read) {
    auto [status, body] = RiskPhase::explain(cfg, query);
    return json(status, body);
  }
  if (path.rfind("/sale/", 0) == 0 && (read || head.method == HTTP_POST)) {
    // /sale/{item} (GET), /sale/{item}/quota and /sale/{item}/return (POST {"units": N}).
    std::string_view rest = path.substr(6);
    size_t slash = rest.find('/');
    auto [status, out] = saleAdmin(cfg, !read, rest.substr(0, slash),
                                   slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1), body);
    return json(status, out);
  }
  if (path == "/lists" || path.rfind("/lists/", 0) == 0) {
    const char* method = read ? "GET" : head.method == HTTP_POST ? "POST" : head.method == HTTP_DELETE ? "DELETE" : "OTHER";
    auto [status, out] = listsAdmin(cfg, method, path.substr(6), query, body);
    return json(status, out);
  }
  if (path == "/cluster" && read) return json(200, ClusterPhase::statusJson());
  if (path == "/ready" && read) return json(200, "{\"ready\":true}");
  if ((path == "/dashboard" || path == "/") && read) return dashboardPage();
  if (path == "/metrics" && read && server->metrics()) {
    LocalResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = server->metrics()->render();
    return r;
  }
  if (path == "/reload" && head.method == HTTP_POST) {
    std::string message;
    bool ok = server->reload(&message);
    auto gen = server->generation();
    return json(ok ? 200 : 400, std::string("{\"ok\":") + (ok ? "true" : "false") +
                                    ",\"generation\":" + std::to_string(gen->id) +
                                    ",\"message\":\"" + jsonEscape(message) + "\"}");
  }
  return jsonError(404, "no such admin endpoint: " + std::string(path));
}

}  // namespace sluice
