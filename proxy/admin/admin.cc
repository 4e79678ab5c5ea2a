#include "proxy/admin/admin.h"

#include <cstdio>

#include "core/clock.h"
#include "core/strings.h"
#include "proxy/router/router.h"
#include "proxy/server/proxy_metrics.h"
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
  if (path == "/ready" && read) return json(200, "{\"ready\":true}");
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
