#include "proxy/config/config_loader.h"

#include "proxy/config/loader.h"

#include <openssl/evp.h>
#include <re2/re2.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <set>
#include <sstream>
#include <string_view>
#include <thread>

#include "core/strings.h"
#include "core/jwt.h"
#include "limiter/admission.h"
#include "limiter/adaptive_concurrency.h"
#include "limiter/circuit_breaker.h"
#include "limiter/gcra.h"
#include "limiter/heavy_hitters.h"
#include "limiter/sliding_window.h"

namespace sluice {

std::string ConfigError::format() const {
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + message;
}

namespace config_detail {

using YAML::Node;

void Loader::load(const Node& root, Config& cfg) {
  if (root.IsNull()) {
    failNoPos("the configuration is empty; at least one listener is required");
    return;
  }
  Mapping top = mapping(root, "",
                        {"workers", "listeners", "admin", "client", "trusted_proxies",
                         "request_id_header", "tracing", "drain_timeout", "log", "upstreams",
                         "routes", "limits", "jwt", "cache", "degrade_switches", "pid_file", "risk",
                         "lua", "redis", "max_open_files", "reload"});
  if (!top.valid) return;

  cfg.workers = 0;
  if (auto n = top.get("workers")) loadWorkers(*n, cfg);
  if (cfg.workers == 0) {
    // "auto" is the default: one worker per core.
    cfg.workers = std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, kMaxWorkers);
  }

  loadListeners(top.get("listeners"), cfg);
  if (auto n = top.get("admin")) loadAdmin(*n, cfg);
  if (auto n = top.get("client")) loadClient(*n, cfg.client);
  if (auto n = top.get("trusted_proxies")) readCidrs(*n, "trusted_proxies", &cfg.trusted_proxies);
  if (auto n = top.get("request_id_header")) {
    std::string s;
    if (scalar(*n, "request_id_header", "a header name", &s)) {
      if (!isToken(s))
        fail(*n, "request_id_header: '" + s + "' is not a valid header name");
      else
        cfg.request_id_header = s;
    }
  }
  if (auto n = top.get("tracing")) {
    Mapping t = mapping(*n, "tracing", {"start_traces"});
    if (auto v = t.get("start_traces")) readBool(*v, t.child("start_traces"), &cfg.trace_start);
  }
  if (auto n = top.get("drain_timeout"))
    readDuration(*n, "drain_timeout", &cfg.drain_timeout, /*allow_zero=*/true);
  if (auto n = top.get("max_open_files")) readAutoInt(*n, "max_open_files", 64, 100000000, &cfg.max_open_files);
  if (auto n = top.get("log")) loadLog(*n, cfg);
  // Upstreams before routes: routes refer to them by name.
  if (auto n = top.get("upstreams")) loadUpstreams(*n, cfg);
  if (auto n = top.get("jwt")) loadJwt(*n, cfg);
  if (auto n = top.get("cache")) loadCache(*n, cfg);
  if (auto n = top.get("redis")) loadRedis(*n, cfg);  // before limits and routes: they use it
  if (auto n = top.get("limits")) loadLimits(*n, cfg);
  if (auto n = top.get("risk")) loadRisk(*n, cfg);
  if (auto n = top.get("routes")) loadRoutes(*n, cfg);
  resolveRouteLimits(cfg);
  if (auto n = top.get("degrade_switches")) loadDegradeSwitches(*n, cfg);
  if (auto n = top.get("pid_file")) readString(*n, "pid_file", &cfg.pid_file);
  if (auto n = top.get("reload")) {
    Mapping r = mapping(*n, "reload", {"watch", "debounce"});
    if (auto v = r.get("watch")) readBool(*v, r.child("watch"), &cfg.reload_watch);
    if (auto v = r.get("debounce")) {
      if (readDuration(*v, r.child("debounce"), &cfg.reload_debounce) &&
          (cfg.reload_debounce < 10 * kMillis || cfg.reload_debounce > 60 * kSeconds))
        fail(*v, "reload.debounce: must be between 10ms and 60s");
    }
  }
  loadLua(top.get("lua"), cfg);
}

// ---- limits

namespace {

// "10r/s", "30r/m", "5r/h", "2r/100ms": requests per period.
bool parseRate(std::string_view s, uint64_t* requests, Nanos* period) {
  size_t r = s.find("r/");
  if (r == std::string_view::npos || r == 0) return false;
  uint64_t n = 0;
  for (char c : s.substr(0, r)) {
    if (c < '0' || c > '9' || n > 1000000000ULL) return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  if (n == 0) return false;
  std::string_view unit = s.substr(r + 2);
  Nanos p;
  if (unit == "s") p = kSeconds;
  else if (unit == "m") p = 60 * kSeconds;
  else if (unit == "h") p = 3600 * kSeconds;
  else if (unit == "d") p = 86400 * kSeconds;
  else if (!parseDurationNanos(unit, &p) || p <= 0) return false;
  *requests = n;
  *period = p;
  return true;
}

}  // namespace

void Loader::loadLimits(const Node& n, Config& cfg) {
  Mapping m = mapping(n, "limits", {"rules", "hot_items"});
  if (!m.valid) return;
  if (auto h = m.get("hot_items")) loadHotItems(*h, cfg);
  auto rules = m.get("rules");
  if (!rules) return;
  std::vector<Node> items;
  if (!sequence(*rules, "limits.rules", &items)) return;
  for (size_t i = 0; i < items.size(); i++) {
    LimitRuleConfig rule;
    std::string path = "limits.rules[" + std::to_string(i) + "]";
    bool ok = loadLimitRule(items[i], path, rule);
    if (rule.id.empty()) continue;
    if (std::find(limit_ids_.begin(), limit_ids_.end(), rule.id) != limit_ids_.end()) {
      fail(items[i], path + ": duplicate rule id '" + rule.id + "'");
      continue;
    }
    // Every id declared, even a rule with errors: a route naming it must not pile a second,
    // misleading "unknown limit rule" on top of the rule's own error.
    limit_ids_.push_back(rule.id);
    if (ok) cfg.limit_rules.push_back(std::move(rule));
  }
}

void Loader::loadHotItems(const Node& n, Config& cfg) {
  auto& h = cfg.hot_items;
  h.enabled = true;
  h.source.kind = LimitKeyKind::kItem;
  h.source.source = std::string("path:") + kDefaultItemPattern;
  h.source.path_regex = std::make_shared<re2::RE2>(kDefaultItemPattern);
  h.source.default_item = true;
  Mapping m = mapping(n, "limits.hot_items", {"enabled", "item", "window", "sub_windows", "hot_rate", "top_k"});
  if (!m.valid) return;
  if (auto v = m.get("enabled")) readBool(*v, m.child("enabled"), &h.enabled);
  if (auto v = m.get("item")) {
    // The same spelling as a rule's key part: "item" or "item=query:sku".
    std::string text;
    if (readString(*v, m.child("item"), &text)) {
      LimitKeyPart part;
      if (loadLimitKeyPart(*v, m.child("item"), &part)) {
        if (part.kind != LimitKeyKind::kItem)
          fail(*v, m.child("item") + ": expected 'item' or 'item=SOURCE', got '" + text + "'");
        else
          h.source = part;
      }
    }
  }
  if (auto v = m.get("window")) readDuration(*v, m.child("window"), &h.window);
  if (auto v = m.get("sub_windows")) readInt(*v, m.child("sub_windows"), 2, 60, &h.sub_windows);
  if (auto v = m.get("hot_rate")) readNumber(*v, m.child("hot_rate"), 0.001, 1e9, &h.hot_rate);
  if (auto v = m.get("top_k")) readInt(*v, m.child("top_k"), 1, 1024, &h.top_k);
  limiter::HeavyHitterParams p;
  p.window = h.window;
  p.subWindows = h.sub_windows;
  p.hotRate = h.hot_rate;
  p.topK = h.top_k;
  if (const char* invalid = p.validate()) fail(n, std::string("limits.hot_items: ") + invalid);
}

void Loader::loadJwt(const Node& n, Config& cfg) {
  auto& j = cfg.jwt;
  Mapping m = mapping(n, "jwt", {"token", "hs256_secret", "hs256_secret_file", "rs256_public_key_file", "leeway"});
  if (!m.valid) return;
  if (auto v = m.get("token")) {
    std::string t;
    if (readString(*v, m.child("token"), &t)) {
      if ((t.rfind("header:", 0) == 0 && t.size() > 7) || (t.rfind("cookie:", 0) == 0 && t.size() > 7))
        j.token_source = t;
      else
        fail(*v, m.child("token") + ": expected header:NAME (a Bearer token) or cookie:NAME, got '" + t + "'");
    }
  }
  auto secret = m.get("hs256_secret");
  auto secret_file = m.get("hs256_secret_file");
  if (secret && secret_file) {
    fail(*secret_file, "jwt: hs256_secret and hs256_secret_file are mutually exclusive; keep one");
  } else if (secret) {
    readString(*secret, m.child("hs256_secret"), &j.hs256_secret);
  } else if (secret_file) {
    std::string file;
    if (readString(*secret_file, m.child("hs256_secret_file"), &file) &&
        readFile(*secret_file, m.child("hs256_secret_file"), file, &j.hs256_secret)) {
      j.hs256_secret = trimAll(j.hs256_secret);
      if (j.hs256_secret.empty()) fail(*secret_file, "jwt.hs256_secret_file: '" + file + "' is empty");
    }
  }
  if (auto v = m.get("rs256_public_key_file")) {
    std::string file;
    if (readString(*v, m.child("rs256_public_key_file"), &file) &&
        readFile(*v, m.child("rs256_public_key_file"), file, &j.rs256_public_key_pem)) {
      std::string err = checkRsaPublicKey(j.rs256_public_key_pem);
      if (!err.empty()) fail(*v, "jwt.rs256_public_key_file: '" + file + "': " + err);
    }
  }
  if (auto v = m.get("leeway")) readDuration(*v, m.child("leeway"), &j.leeway, /*allow_zero=*/true);
}

bool Loader::loadLimitKeyPart(const Node& n, const std::string& path, LimitKeyPart* part) {
  std::string text;
  if (!readString(n, path, &text)) return false;
  // "ip", "user_agent", "route", "global", "member", "device", "item" (default sources), or
  // "member=cookie:uid", "item=path:^/api/items/([^/]+)", or a bare "header:X", "cookie:X",
  // "query:X".
  std::string kind = text, source;
  size_t eq = text.find('=');
  if (eq != std::string::npos) {
    kind = text.substr(0, eq);
    source = text.substr(eq + 1);
  } else if (text.rfind("header:", 0) == 0 || text.rfind("cookie:", 0) == 0 ||
             text.rfind("query:", 0) == 0 || text.rfind("jwt:", 0) == 0 || text.rfind("lua:", 0) == 0) {
    kind = text.substr(0, text.find(':'));
    source = text;
  }
  static const std::pair<const char*, LimitKeyKind> kKinds[] = {
      {"ip", LimitKeyKind::kIp},         {"user_agent", LimitKeyKind::kUserAgent},
      {"member", LimitKeyKind::kMember}, {"device", LimitKeyKind::kDevice},
      {"item", LimitKeyKind::kItem},     {"route", LimitKeyKind::kRoute},
      {"jwt", LimitKeyKind::kMember},
      {"header", LimitKeyKind::kHeader}, {"cookie", LimitKeyKind::kCookie},
      {"query", LimitKeyKind::kQuery},   {"global", LimitKeyKind::kGlobal},
      {"upstream", LimitKeyKind::kUpstream}, {"lua", LimitKeyKind::kLua}};
  bool found = false;
  for (const auto& [name, k] : kKinds)
    if (kind == name) {
      part->kind = k;
      found = true;
    }
  if (!found) {
    std::vector<std::string> names;
    for (const auto& kk : kKinds) names.push_back(kk.first);
    fail(n, path + ": unknown key kind '" + kind + "'" + suggestion(kind, names) +
                " (ip, user_agent, member, device, item, route, upstream, global, header:NAME, cookie:NAME, "
                "query:NAME, jwt:CLAIM, lua:NAME)");
    return false;
  }
  if (source.empty()) {
    if (part->kind == LimitKeyKind::kMember) source = "cookie:member";
    if (part->kind == LimitKeyKind::kDevice) source = "cookie:device";
    if (part->kind == LimitKeyKind::kItem) source = std::string("path:") + kDefaultItemPattern;
  }
  bool needs_source = part->kind == LimitKeyKind::kMember || part->kind == LimitKeyKind::kDevice ||
                      part->kind == LimitKeyKind::kItem || part->kind == LimitKeyKind::kHeader ||
                      part->kind == LimitKeyKind::kCookie || part->kind == LimitKeyKind::kQuery ||
                      part->kind == LimitKeyKind::kLua;
  if (!needs_source && !source.empty()) {
    fail(n, path + ": '" + kind + "' takes no source");
    return false;
  }
  if (needs_source) {
    size_t colon = source.find(':');
    std::string where = colon == std::string::npos ? "" : source.substr(0, colon);
    std::string what = colon == std::string::npos ? "" : source.substr(colon + 1);
    if ((where != "header" && where != "cookie" && where != "query" && where != "path" &&
         where != "jwt" && where != "lua") ||
        what.empty()) {
      fail(n, path + ": source '" + source +
                  "' must be header:NAME, cookie:NAME, query:NAME, path:REGEX, jwt:CLAIM or lua:NAME");
      return false;
    }
    if (where == "path") {
      auto re = std::make_shared<re2::RE2>(what, re2::RE2::Quiet);
      if (!re->ok()) {
        fail(n, path + ": invalid regex '" + what + "': " + re->error());
        return false;
      }
      if (re->NumberOfCapturingGroups() < 1) {
        fail(n, path + ": regex '" + what + "' needs a capture group for the value");
        return false;
      }
      part->path_regex = re;
      part->default_item = what == kDefaultItemPattern;
    }
  }
  part->source = source;
  return true;
}

bool Loader::loadLimitRule(const Node& n, const std::string& path, LimitRuleConfig& rule) {
  Mapping m = mapping(n, path,
                      {"id", "key", "algorithm", "rate", "burst", "delay", "nodelay", "limit",
                       "window", "max_active", "action", "status", "body", "content_type",
                       "max_delay", "count_rejected", "memory", "missing_key", "ipv6_prefix",
                       "rate_limit_headers", "resolution", "location", "items", "only_hot",
                       "strategy", "threshold", "slow_call", "min_requests", "cooldown",
                       "half_open_probes", "degrade_from_cache", "scope", "cluster_mode",
                       "sync_interval", "redis_timeout", "on_redis_down"});
  if (!m.valid) return false;
  std::string id;
  if (auto v = m.get("id")) {
    if (readString(*v, m.child("id"), &id) && !isName(id)) {
      fail(*v, m.child("id") + ": invalid id '" + id +
                   "' (letters, digits, '_', '-' and '.', at most 64 characters)");
      id.clear();
    }
  } else {
    fail(n, path + ": missing required key 'id'");
  }
  bool ok = !id.empty();
  if (auto v = m.get("key")) {
    std::vector<Node> parts;
    if (sequence(*v, m.child("key"), &parts, /*allow_scalar=*/true)) {
      for (size_t i = 0; i < parts.size(); i++) {
        LimitKeyPart part;
        if (loadLimitKeyPart(parts[i], m.child("key") + "[" + std::to_string(i) + "]", &part)) {
          rule.key.push_back(part);
          if (!rule.key_signature.empty()) rule.key_signature += "+";
          rule.key_signature += parts[i].Scalar();
        } else {
          ok = false;
        }
      }
      if (parts.empty()) {
        fail(*v, m.child("key") + ": at least one key part is required");
        ok = false;
      }
    } else {
      ok = false;
    }
  } else {
    fail(n, path + ": missing required key 'key'");
    ok = false;
  }
  if (auto v = m.get("algorithm")) {
    std::string a;
    if (scalar(*v, m.child("algorithm"), "an algorithm", &a)) {
      if (a == "leaky_bucket") rule.algorithm = LimitAlgorithm::kLeakyBucket;
      else if (a == "sliding_window") rule.algorithm = LimitAlgorithm::kSlidingWindow;
      else if (a == "concurrency") rule.algorithm = LimitAlgorithm::kConcurrency;
      else if (a == "circuit_breaker") rule.algorithm = LimitAlgorithm::kCircuitBreaker;
      else {
        fail(*v, m.child("algorithm") + ": unknown algorithm '" + a + "'" +
                     suggestion(a, std::vector<std::string>{"leaky_bucket", "sliding_window",
                                                            "concurrency", "circuit_breaker"}));
        ok = false;
      }
    }
  }
  if (auto v = m.get("rate")) {
    std::string r;
    if (scalar(*v, m.child("rate"), "a rate like 10r/s", &r) && !parseRate(r, &rule.requests, &rule.period)) {
      fail(*v, m.child("rate") + ": expected a rate like 10r/s, 30r/m or 5r/h, got '" + r + "'");
      ok = false;
    }
  }
  if (auto v = m.get("burst")) readInt(*v, m.child("burst"), 0, 1000000, &rule.burst);
  if (auto v = m.get("delay")) readInt(*v, m.child("delay"), 0, 1000000, &rule.delay);
  if (auto v = m.get("nodelay")) readBool(*v, m.child("nodelay"), &rule.nodelay);
  if (auto v = m.get("limit")) readInt(*v, m.child("limit"), 1, 4000000000LL, &rule.limit);
  if (auto v = m.get("window")) readDuration(*v, m.child("window"), &rule.window);
  if (auto v = m.get("max_active")) readInt(*v, m.child("max_active"), 1, 10000000, &rule.max_active);
  if (auto v = m.get("action")) {
    std::string a;
    if (scalar(*v, m.child("action"), "an action", &a)) {
      if (a == "reject") rule.action = LimitAction::kReject;
      else if (a == "delay") rule.action = LimitAction::kDelay;
      else if (a == "degrade") rule.action = LimitAction::kDegrade, rule.status = 200;
      else if (a == "shadow") rule.action = LimitAction::kShadow;
      else if (a == "redirect") rule.action = LimitAction::kRedirect, rule.status = 302;
      else {
        fail(*v, m.child("action") + ": unknown action '" + a + "'" +
                     suggestion(a, std::vector<std::string>{"reject", "delay", "degrade", "shadow", "redirect"}));
        ok = false;
      }
    }
  }
  if (auto v = m.get("status")) readInt(*v, m.child("status"), 200, 599, &rule.status);
  if (auto v = m.get("body")) scalar(*v, m.child("body"), "a string", &rule.body);
  if (auto v = m.get("content_type")) readString(*v, m.child("content_type"), &rule.content_type);
  if (auto v = m.get("max_delay")) readDuration(*v, m.child("max_delay"), &rule.max_delay);
  if (auto v = m.get("count_rejected")) readBool(*v, m.child("count_rejected"), &rule.count_rejected);
  if (auto v = m.get("memory")) readSize(*v, m.child("memory"), &rule.memory, 64 * 1024);
  if (auto v = m.get("missing_key")) {
    std::string mk;
    if (scalar(*v, m.child("missing_key"), "skip or fallback:NAME", &mk)) {
      if (mk == "skip") rule.skip_missing = true;
      else if (mk.rfind("fallback:", 0) == 0 && mk.size() > 9) {
        rule.skip_missing = false;
        rule.fallback_key = mk.substr(9);
      } else {
        fail(*v, m.child("missing_key") + ": expected 'skip' or 'fallback:NAME', got '" + mk + "'");
      }
    }
  }
  if (auto v = m.get("ipv6_prefix")) readInt(*v, m.child("ipv6_prefix"), 1, 128, &rule.ipv6_prefix);
  if (auto v = m.get("rate_limit_headers")) {
    // true/false, or which draft: "draft" (RateLimit-Policy + RateLimit) or "legacy"
    // (RateLimit-Limit / -Remaining / -Reset, still what many clients parse).
    std::string h;
    if (scalar(*v, m.child("rate_limit_headers"), "true, false, draft or legacy", &h)) {
      std::string l = toLower(h);
      if (l == "true" || l == "draft") rule.rate_limit_headers = RateLimitHeaders::kDraft;
      else if (l == "false" || l == "off") rule.rate_limit_headers = RateLimitHeaders::kOff;
      else if (l == "legacy") rule.rate_limit_headers = RateLimitHeaders::kLegacy;
      else fail(*v, m.child("rate_limit_headers") + ": expected true, false, draft or legacy, got '" + h + "'");
    }
  }
  if (auto v = m.get("resolution")) {
    std::string r;
    if (readEnum(*v, m.child("resolution"), {"ns", "nginx"}, &r)) rule.nginx_resolution = r == "nginx";
  }
  if (auto v = m.get("location")) {
    if (readString(*v, m.child("location"), &rule.location)) {
      // It goes into a response header as written: no CR/LF/NUL smuggled into the head.
      bool clean = !rule.location.empty();
      for (char c : rule.location)
        if (c == '\r' || c == '\n' || c == '\0') clean = false;
      if (!clean) fail(*v, m.child("location") + ": must be a non-empty URL on one line"), ok = false;
    }
  }
  if (rule.action == LimitAction::kRedirect && rule.location.empty()) {
    fail(n, path + ": action 'redirect' needs 'location'");
    ok = false;
  }
  if (auto v = m.get("only_hot")) readBool(*v, m.child("only_hot"), &rule.only_hot);
  if (auto v = m.get("degrade_from_cache")) {
    if (readDuration(*v, m.child("degrade_from_cache"), &rule.degrade_from_cache) &&
        rule.action != LimitAction::kDegrade) {
      fail(*v, m.child("degrade_from_cache") + ": only a rule with action 'degrade' answers from the cache");
      ok = false;
    }
  }
  bool has_item = false;
  for (const auto& part : rule.key)
    if (part.kind == LimitKeyKind::kItem) has_item = true;
  if (auto v = m.get("items")) {
    if (!has_item) {
      fail(*v, m.child("items") + ": per-item limits need an 'item' part in the rule's key");
      ok = false;
    } else if (!v->IsMap()) {
      fail(*v, m.child("items") + ": expected a mapping of item id -> {rate, burst} or {limit}");
      ok = false;
    } else {
      for (auto it = v->begin(); it != v->end(); ++it) {
        Node k = it->first;
        Node val = it->second;
        LimitItemOverride o;
        o.item = k.Scalar();
        std::string ip = m.child("items") + "." + o.item;
        Mapping om = mapping(val, ip, {"rate", "burst", "limit"});
        if (!om.valid) {
          ok = false;
          continue;
        }
        if (auto r = om.get("rate")) {
          std::string rs;
          if (scalar(*r, om.child("rate"), "a rate like 10r/s", &rs) && !parseRate(rs, &o.requests, &o.period)) {
            fail(*r, om.child("rate") + ": expected a rate like 10r/s, 30r/m or 5r/h, got '" + rs + "'");
            ok = false;
          }
        }
        if (auto b = om.get("burst")) readInt(*b, om.child("burst"), 0, 1000000, &o.burst);
        if (auto l = om.get("limit")) readInt(*l, om.child("limit"), 1, 4000000000LL, &o.limit);
        bool bucket = rule.algorithm == LimitAlgorithm::kLeakyBucket;
        if (bucket ? o.requests == 0 : o.limit == 0) {
          fail(val, ip + (bucket ? ": needs 'rate'" : ": needs 'limit'"));
          ok = false;
        }
        rule.items.push_back(o);
      }
    }
  }
  if (rule.only_hot && !has_item) {
    fail(n, path + ": only_hot needs an 'item' part in the rule's key");
    ok = false;
  }
  // Circuit breaker numbers.
  auto& b = rule.breaker;
  if (auto v = m.get("strategy")) {
    std::string st;
    if (readEnum(*v, m.child("strategy"), {"error_ratio", "slow_call_ratio"}, &st)) b.slow_calls = st == "slow_call_ratio";
  }
  if (auto v = m.get("threshold")) readNumber(*v, m.child("threshold"), 0.000001, 1.0, &b.threshold);
  if (auto v = m.get("slow_call")) readDuration(*v, m.child("slow_call"), &b.slow_call);
  if (auto v = m.get("min_requests")) readInt(*v, m.child("min_requests"), 1, 1000000, &b.min_requests);
  if (auto v = m.get("cooldown")) readDuration(*v, m.child("cooldown"), &b.cooldown);
  if (auto v = m.get("half_open_probes")) readInt(*v, m.child("half_open_probes"), 1, 1000, &b.half_open_probes);
  bool breaker_only = false;
  for (const char* k : {"strategy", "threshold", "slow_call", "min_requests", "cooldown", "half_open_probes"})
    if (m.get(k) && rule.algorithm != LimitAlgorithm::kCircuitBreaker) {
      fail(*m.get(k), m.child(k) + ": only a circuit_breaker rule takes '" + k + "'");
      breaker_only = true;
    }
  if (breaker_only) ok = false;

  // Each algorithm needs its own numbers, and only those.
  switch (rule.algorithm) {
    case LimitAlgorithm::kLeakyBucket:
      if (!m.get("rate")) fail(n, path + ": a leaky_bucket rule needs 'rate' (e.g. 10r/s)"), ok = false;
      break;
    case LimitAlgorithm::kSlidingWindow:
      if (!m.get("limit")) fail(n, path + ": a sliding_window rule needs 'limit' (requests per window)"), ok = false;
      break;
    case LimitAlgorithm::kConcurrency:
      if (!m.get("max_active")) fail(n, path + ": a concurrency rule needs 'max_active'"), ok = false;
      if (rule.action == LimitAction::kDelay) fail(n, path + ": a concurrency rule cannot 'delay'"), ok = false;
      break;
    case LimitAlgorithm::kCircuitBreaker: {
      // One breaker per route or per upstream pool: the key says which.
      if (rule.key.size() != 1 ||
          (rule.key[0].kind != LimitKeyKind::kRoute && rule.key[0].kind != LimitKeyKind::kUpstream)) {
        fail(n, path + ": a circuit_breaker rule's key is 'route' or 'upstream'");
        ok = false;
      }
      if (rule.action == LimitAction::kDelay) fail(n, path + ": a circuit_breaker rule cannot 'delay'"), ok = false;
      if (!m.get("action")) rule.status = 503;  // an open breaker refuses with 503 by default
      if (m.get("window")) b.window = rule.window;
      limiter::CircuitBreakerParams p;
      p.threshold = b.threshold;
      p.minRequests = b.min_requests;
      p.statWindow = b.window;
      p.cooldown = b.cooldown;
      p.halfOpenProbes = b.half_open_probes;
      if (const char* invalid = p.validate()) fail(n, path + ": " + invalid), ok = false;
      break;
    }
  }
  // What the limiter itself refuses (a 1 ns interval, a bucket deeper than 100 years whose
  // arithmetic would overflow, a sub-millisecond window) is refused here, at the rule.
  const char* invalid = nullptr;
  if (ok && rule.algorithm == LimitAlgorithm::kLeakyBucket && rule.requests > 0) {
    limiter::GcraParams p;
    p.requests = rule.requests;
    p.period = rule.period;
    p.burst = std::max(rule.burst, rule.delay);  // delay=N shares the burst's arithmetic
    invalid = p.validate();
  } else if (ok && rule.algorithm == LimitAlgorithm::kSlidingWindow) {
    limiter::SlidingWindowParams p;
    p.limit = rule.limit;
    p.window = rule.window;
    invalid = p.validate();
  }
  if (invalid) {
    fail(n, path + ": " + invalid);
    ok = false;
  }
  if (rule.action == LimitAction::kDelay && rule.algorithm == LimitAlgorithm::kSlidingWindow) {
    fail(n, path + ": action 'delay' needs algorithm leaky_bucket");
    ok = false;
  }
  if (!loadLimitRuleScope(m, rule)) ok = false;
  rule.id = id;
  return ok;
}

void Loader::resolveRouteLimits(Config& cfg) {
  for (auto& r : cfg.routes) {
    size_t concurrency = 0;
    for (const auto& name : r.limit_names) {
      int idx = -1;
      for (size_t i = 0; i < cfg.limit_rules.size(); i++)
        if (cfg.limit_rules[i].id == name) idx = static_cast<int>(i);
      if (idx < 0) continue;
      r.limits.push_back(idx);
      if (cfg.limit_rules[static_cast<size_t>(idx)].algorithm == LimitAlgorithm::kConcurrency) concurrency++;
    }
    // admit() takes at most this many concurrency gates per request (limiter/admission.h).
    if (concurrency > limiter::kMaxConcurrencyRules)
      failNoPos("routes." + r.name + ".limits: at most " + std::to_string(limiter::kMaxConcurrencyRules) +
                " concurrency rules per route");
  }
}

void Loader::loadWorkers(const Node& n, Config& cfg) {
  const std::string expected = "\"auto\" or an integer 1.." + std::to_string(kMaxWorkers);
  std::string s;
  if (!scalar(n, "workers", expected, &s)) return;
  if (s == "auto") return;
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || v < 1 || v > kMaxWorkers) {
    fail(n, "workers: expected " + expected + ", got '" + s + "'");
    return;
  }
  cfg.workers = static_cast<int>(v);
}

void Loader::loadListeners(const std::optional<Node>& n, Config& cfg) {
  if (!n) {
    failNoPos("at least one listener is required (listeners: [{address: 127.0.0.1:8080}])");
    return;
  }
  std::vector<Node> items;
  if (!sequence(*n, "listeners", &items)) return;
  if (items.empty()) {
    fail(*n, "listeners: at least one listener is required");
    return;
  }
  std::set<std::string> names;
  for (size_t i = 0; i < items.size(); i++) {
    std::string path = "listeners[" + std::to_string(i) + "]";
    Mapping m = mapping(items[i], path, {"address", "name", "proxy_protocol", "backlog"});
    if (!m.valid) continue;
    ListenerConfig l;
    bool dup_address = false;
    auto addr = m.get("address");
    if (!addr) {
      fail(items[i], path + ": missing required key 'address'");
    } else {
      HostPort hp;
      if (readAddress(*addr, m.child("address"), &hp)) {
        l.host = hp.host;
        l.port = hp.port;
        l.name = hp.text();
        for (const auto& [ip, port] : listener_addrs_)
          dup_address |= (ip == hp.ip && port == hp.port);
        if (dup_address)
          fail(*addr, m.child("address") + ": duplicate listener address '" + hp.text() + "'");
        listener_addrs_.emplace_back(hp.ip, hp.port);
      }
    }
    if (auto v = m.get("name")) {
      std::string name;
      if (readString(*v, m.child("name"), &name)) l.name = name;
    }
    // A duplicated address also duplicates its default name; one error is enough.
    if (!l.name.empty() && !names.insert(l.name).second && !dup_address) {
      auto name_node = m.get("name");
      fail(name_node ? *name_node : items[i], path + ": duplicate listener name '" + l.name + "'");
    }
    if (auto v = m.get("proxy_protocol")) readBool(*v, m.child("proxy_protocol"), &l.proxy_protocol);
    if (auto v = m.get("backlog")) readInt(*v, m.child("backlog"), 1, 65535, &l.backlog);
    cfg.listeners.push_back(std::move(l));
  }
}

void Loader::loadAdmin(const Node& n, Config& cfg) {
  Mapping m = mapping(n, "admin", {"address", "enabled", "token", "token_file", "allow"});
  if (!m.valid) return;
  AdminConfig& a = cfg.admin;
  if (auto v = m.get("enabled")) readBool(*v, m.child("enabled"), &a.enabled);
  if (auto v = m.get("address")) {
    HostPort hp;
    if (readAddress(*v, m.child("address"), &hp)) {
      a.host = hp.host;
      a.port = hp.port;
      if (a.enabled) {
        for (const auto& [ip, port] : listener_addrs_) {
          if (ip == hp.ip && port == hp.port) {
            fail(*v, "admin.address: '" + hp.text() + "' is also a listener address");
            break;
          }
        }
      }
    }
  }
  auto token = m.get("token");
  auto token_file = m.get("token_file");
  if (token && token_file) {
    fail(*token_file, "admin: token and token_file are mutually exclusive; keep one");
  } else if (token) {
    readString(*token, m.child("token"), &a.token);
  } else if (token_file) {
    if (readString(*token_file, m.child("token_file"), &a.token_file) &&
        readFile(*token_file, "admin.token_file", a.token_file, &a.token)) {
      a.token = trimAll(a.token);
      if (a.token.empty()) fail(*token_file, "admin.token_file: '" + a.token_file + "' is empty");
    }
  }
  if (auto v = m.get("allow")) readCidrs(*v, m.child("allow"), &a.allow);
}

void Loader::loadClient(const Node& n, ClientConfig& c) {
  Mapping m = mapping(n, "client",
                      {"max_uri_size", "max_header_size", "max_headers", "max_body_size",
                       "header_timeout", "body_timeout", "keepalive_timeout", "send_timeout",
                       "max_requests_per_connection", "buffer_size",
                       "max_connections"});
  if (!m.valid) return;
  if (auto v = m.get("max_uri_size")) readSize(*v, m.child("max_uri_size"), &c.max_uri_size, 1);
  if (auto v = m.get("max_header_size"))
    readSize(*v, m.child("max_header_size"), &c.max_header_size, 1);
  if (auto v = m.get("max_headers")) readInt(*v, m.child("max_headers"), 1, 10000, &c.max_headers);
  if (auto v = m.get("max_body_size"))
    readSize(*v, m.child("max_body_size"), &c.max_body_size, 0);
  if (auto v = m.get("header_timeout")) readDuration(*v, m.child("header_timeout"), &c.header_timeout);
  if (auto v = m.get("body_timeout")) readDuration(*v, m.child("body_timeout"), &c.body_timeout);
  if (auto v = m.get("keepalive_timeout"))
    readDuration(*v, m.child("keepalive_timeout"), &c.keepalive_timeout);
  if (auto v = m.get("send_timeout")) readDuration(*v, m.child("send_timeout"), &c.send_timeout);
  if (auto v = m.get("max_requests_per_connection"))
    readInt(*v, m.child("max_requests_per_connection"), 1, 100000000,
            &c.max_requests_per_connection);
  // Below 4k a single ordinary header block no longer fits and every request stalls.
  if (auto v = m.get("buffer_size")) readSize(*v, m.child("buffer_size"), &c.buffer_size, 4096);
  if (auto v = m.get("max_connections"))
    readAutoInt(*v, m.child("max_connections"), 1, 10000000, &c.max_connections);
}

void Loader::loadLog(const Node& n, Config& cfg) {
  Mapping m = mapping(n, "log", {"level", "error", "access", "decisions", "decision_sample"});
  if (!m.valid) return;
  if (auto v = m.get("level"))
    readEnum(*v, m.child("level"), {"debug", "info", "warn", "error"}, &cfg.log_level);
  if (auto v = m.get("error")) readString(*v, m.child("error"), &cfg.error_log);
  if (auto v = m.get("access")) readString(*v, m.child("access"), &cfg.access_log.target);
  if (auto v = m.get("decisions")) readString(*v, m.child("decisions"), &cfg.access_log.decisions_target);
  if (auto v = m.get("decision_sample"))
    readNumber(*v, m.child("decision_sample"), 0.0, 1.0, &cfg.access_log.decision_sample);
}

void Loader::loadUpstreams(const Node& n, Config& cfg) {
  if (n.IsNull()) return;
  if (!n.IsMap()) {
    fail(n, "upstreams: expected a mapping of name -> upstream, got " + describe(n));
    return;
  }
  std::set<std::string> seen;
  for (auto it = n.begin(); it != n.end(); ++it) {
    Node k = it->first;  // a copy, see mapping()
    if (!k.IsScalar()) {
      fail(k, "upstreams: names must be plain strings");
      continue;
    }
    std::string name = k.Scalar();
    upstream_names_.push_back(name);
    if (!isName(name)) {
      fail(k, "upstreams: invalid name '" + name +
                  "' (letters, digits, '_', '-' and '.', at most 64 characters)");
    }
    if (!seen.insert(name).second) {
      fail(k, "upstreams: duplicate upstream '" + name + "'");
      continue;
    }
    UpstreamConfig u;
    u.name = name;
    loadUpstream(it->second, "upstreams." + name, u);
    cfg.upstreams.push_back(std::move(u));
  }
}

void Loader::loadUpstream(const Node& n, const std::string& path, UpstreamConfig& u) {
  Mapping m = mapping(n, path,
                      {"balance", "hash_key", "servers", "keepalive", "connect_timeout",
                       "send_timeout", "read_timeout", "passive_health", "health_check", "retry",
                       "max_active", "adaptive_concurrency", "saturation"});
  if (!m.valid) return;
  if (auto v = m.get("max_active")) readInt(*v, m.child("max_active"), 1, 10000000, &u.max_active);
  if (auto v = m.get("adaptive_concurrency")) {
    auto& a = u.adaptive;
    a.enabled = true;
    Mapping am = mapping(*v, m.child("adaptive_concurrency"),
                         {"enabled", "floor", "ceiling", "sample_window", "percentile", "min_rtt_interval"});
    if (am.valid) {
      if (auto x = am.get("enabled")) readBool(*x, am.child("enabled"), &a.enabled);
      if (auto x = am.get("floor")) readInt(*x, am.child("floor"), 1, 1000000, &a.floor);
      if (auto x = am.get("ceiling")) readInt(*x, am.child("ceiling"), 1, 1000000, &a.ceiling);
      if (auto x = am.get("sample_window")) readDuration(*x, am.child("sample_window"), &a.sample_window);
      if (auto x = am.get("percentile")) {
        double pct = 50;
        if (readNumber(*x, am.child("percentile"), 1, 99, &pct)) a.percentile = pct / 100.0;
      }
      if (auto x = am.get("min_rtt_interval")) readDuration(*x, am.child("min_rtt_interval"), &a.min_rtt_interval);
      limiter::GradientParams gp;
      gp.floor = a.floor;
      gp.ceiling = a.ceiling;
      gp.initialLimit = a.floor;
      gp.sampleWindow = a.sample_window;
      gp.percentile = a.percentile;
      gp.minRttInterval = a.min_rtt_interval;
      if (const char* invalid = gp.validate()) fail(*v, m.child("adaptive_concurrency") + ": " + invalid);
    }
  }
  if (auto v = m.get("saturation")) {
    auto& sc = u.saturation;
    Mapping sm = mapping(*v, m.child("saturation"), {"header", "capacity", "shed_low", "shed_normal", "hold"});
    if (sm.valid) {
      if (auto x = sm.get("header")) {
        if (readString(*x, sm.child("header"), &sc.header) && !isToken(sc.header))
          fail(*x, sm.child("header") + ": '" + sc.header + "' is not a valid header name");
      } else {
        fail(*v, m.child("saturation") + ": missing required key 'header'");
      }
      if (auto x = sm.get("capacity")) readNumber(*x, sm.child("capacity"), 0.001, 1e12, &sc.capacity);
      else fail(*v, m.child("saturation") + ": missing required key 'capacity'");
      if (auto x = sm.get("shed_low")) readNumber(*x, sm.child("shed_low"), 0.01, 10, &sc.shed_low);
      if (auto x = sm.get("shed_normal")) readNumber(*x, sm.child("shed_normal"), 0.01, 10, &sc.shed_normal);
      if (auto x = sm.get("hold")) readDuration(*x, sm.child("hold"), &sc.hold);
      if (sc.shed_low > sc.shed_normal)
        fail(*v, m.child("saturation") + ": shed_low must not exceed shed_normal (low-priority routes go first)");
    }
  }

  bool balance_ok = true;
  if (auto v = m.get("balance")) {
    std::string b;
    balance_ok = readEnum(*v, m.child("balance"), {"round_robin", "least_conn", "hash"}, &b);
    if (balance_ok) {
      u.balance = b == "hash" ? BalanceKind::kHash
                  : b == "least_conn" ? BalanceKind::kLeastConn
                                      : BalanceKind::kRoundRobin;
    }
  }
  if (auto v = m.get("hash_key")) {
    std::string key;
    if (scalar(*v, m.child("hash_key"), "a hash key like client_ip or header:NAME", &key)) {
      size_t colon = key.find(':');
      std::string kind = key.substr(0, colon);
      std::string arg = colon == std::string::npos ? "" : key.substr(colon + 1);
      bool ok = false;
      if (colon == std::string::npos) {
        ok = key == "client_ip" || key == "path" || key == "uri";
      } else if (kind == "header") {
        ok = isToken(arg);
      } else if (kind == "cookie" || kind == "query") {
        ok = !arg.empty();
      }
      if (!ok) {
        fail(*v, m.child("hash_key") +
                     ": expected client_ip, path, uri, header:NAME, cookie:NAME or query:NAME, "
                     "got '" + key + "'");
      } else if (u.balance != BalanceKind::kHash && balance_ok) {
        // A key that silently does nothing usually means the balance line was forgotten.
        fail(*v, m.child("hash_key") + ": only applies with balance: hash");
      } else {
        u.hash_key = key;
      }
    }
  }

  auto servers = m.get("servers");
  if (!servers) {
    fail(n, path + ": missing required key 'servers' (at least one server)");
  } else {
    std::vector<Node> items;
    if (sequence(*servers, m.child("servers"), &items)) {
      if (items.empty()) fail(*servers, m.child("servers") + ": at least one server is required");
      for (size_t i = 0; i < items.size(); i++) {
        std::string sp = m.child("servers") + "[" + std::to_string(i) + "]";
        Mapping sm = mapping(items[i], sp, {"address", "weight"});
        if (!sm.valid) continue;
        UpstreamServerConfig s;
        auto addr = sm.get("address");
        if (!addr) {
          fail(items[i], sp + ": missing required key 'address'");
          continue;
        }
        HostPort hp;
        if (!readAddress(*addr, sm.child("address"), &hp)) continue;
        s.host = hp.host;
        s.port = hp.port;
        for (const auto& other : u.servers) {
          IpAddress other_ip;
          if (IpAddress::parse(other.host, &other_ip) && other_ip == hp.ip && other.port == s.port)
            fail(*addr, sm.child("address") + ": duplicate server '" + hp.text() + "'");
        }
        if (auto w = sm.get("weight")) readInt(*w, sm.child("weight"), 1, 1000, &s.weight);
        u.servers.push_back(std::move(s));
      }
    }
  }

  if (auto v = m.get("keepalive")) {
    Mapping k = mapping(*v, m.child("keepalive"), {"max_idle", "idle_timeout"});
    if (auto x = k.get("max_idle")) readInt(*x, k.child("max_idle"), 0, 100000, &u.keepalive_max_idle);
    if (auto x = k.get("idle_timeout"))
      readDuration(*x, k.child("idle_timeout"), &u.keepalive_idle_timeout);
  }
  if (auto v = m.get("connect_timeout")) readDuration(*v, m.child("connect_timeout"), &u.connect_timeout);
  if (auto v = m.get("send_timeout")) readDuration(*v, m.child("send_timeout"), &u.send_timeout);
  if (auto v = m.get("read_timeout")) readDuration(*v, m.child("read_timeout"), &u.read_timeout);
  if (auto v = m.get("passive_health")) {
    Mapping p = mapping(*v, m.child("passive_health"), {"max_fails", "fail_timeout"});
    if (auto x = p.get("max_fails")) readInt(*x, p.child("max_fails"), 1, 1000, &u.max_fails);
    if (auto x = p.get("fail_timeout")) readDuration(*x, p.child("fail_timeout"), &u.fail_timeout);
  }
  if (auto v = m.get("health_check")) loadHealthCheck(*v, m.child("health_check"), u.health_check);
  if (auto v = m.get("retry")) {
    Mapping r = mapping(*v, m.child("retry"), {"attempts", "budget_percent", "min_concurrent"});
    if (auto x = r.get("attempts")) readInt(*x, r.child("attempts"), 0, 5, &u.retries);
    if (auto x = r.get("budget_percent"))
      readNumber(*x, r.child("budget_percent"), 0, 100, &u.retry_budget_percent);
    if (auto x = r.get("min_concurrent"))
      readInt(*x, r.child("min_concurrent"), 0, 10000, &u.retry_min_concurrent);
  }
}

void Loader::loadHealthCheck(const Node& n, const std::string& path, HealthCheckConfig& h) {
  Mapping m = mapping(n, path,
                      {"enabled", "path", "host", "interval", "timeout", "rise", "fall",
                       "expect_status"});
  if (!m.valid) return;
  // Writing the section is the opt-in; `enabled: false` keeps it around but off.
  h.enabled = true;
  if (auto v = m.get("enabled")) readBool(*v, m.child("enabled"), &h.enabled);
  if (auto v = m.get("path")) {
    std::string p;
    if (readString(*v, m.child("path"), &p)) {
      if (p.front() != '/')
        fail(*v, m.child("path") + ": must start with '/', got '" + p + "'");
      else
        h.path = p;
    }
  }
  if (auto v = m.get("host")) readString(*v, m.child("host"), &h.host);
  if (auto v = m.get("interval")) readDuration(*v, m.child("interval"), &h.interval);
  if (auto v = m.get("timeout")) readDuration(*v, m.child("timeout"), &h.timeout);
  if (auto v = m.get("rise")) readInt(*v, m.child("rise"), 1, 100, &h.rise);
  if (auto v = m.get("fall")) readInt(*v, m.child("fall"), 1, 100, &h.fall);
  if (auto v = m.get("expect_status")) {
    const std::string expected = "a status or range like 200-399";
    std::string s;
    if (scalar(*v, m.child("expect_status"), expected, &s)) {
      size_t dash = s.find('-');
      std::string lo_s = trimAll(s.substr(0, dash));
      std::string hi_s = dash == std::string::npos ? lo_s : trimAll(s.substr(dash + 1));
      auto num = [](const std::string& t, int* out) {
        auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), *out);
        return !t.empty() && ec == std::errc() && ptr == t.data() + t.size() && *out >= 100 &&
               *out <= 599;
      };
      int lo = 0, hi = 0;
      if (!num(lo_s, &lo) || !num(hi_s, &hi) || lo > hi) {
        fail(*v, m.child("expect_status") + ": expected " + expected +
                     " (statuses 100..599), got '" + s + "'");
      } else {
        h.expect_status_min = lo;
        h.expect_status_max = hi;
      }
    }
  }
}

void Loader::loadRoutes(const Node& n, Config& cfg) {
  std::vector<Node> items;
  if (n.IsNull()) return;
  if (!sequence(n, "routes", &items)) return;
  std::set<std::string> names;
  for (size_t i = 0; i < items.size(); i++) {
    std::string path = "routes[" + std::to_string(i) + "]";
    RouteConfig r;
    loadRoute(items[i], path, r);
    if (!r.name.empty() && !names.insert(r.name).second) {
      Mapping m{items[i], path, items[i].IsMap()};
      fail(*m.get("name"), path + ": duplicate route name '" + r.name + "'");
    }
    cfg.routes.push_back(std::move(r));
  }
}

void Loader::loadRoute(const Node& n, const std::string& path, RouteConfig& r) {
  Mapping m = mapping(n, path,
                      {"name", "match", "upstream", "connect_timeout", "send_timeout",
                       "read_timeout", "max_body_size", "direct_response", "limits", "priority",
                       "cache", "policies", "aggregate", "risk", "sale_gate"});
  if (!m.valid) return;
  if (auto v = m.get("sale_gate")) loadRouteSaleGate(*v, m.child("sale_gate"), r);
  if (auto v = m.get("cache")) loadRouteCache(*v, m.child("cache"), r);
  if (auto v = m.get("risk")) loadRouteRisk(*v, m.child("risk"), r);
  if (auto v = m.get("priority")) {
    std::string pr;
    if (readEnum(*v, m.child("priority"), {"low", "normal", "high", "critical"}, &pr))
      r.priority = pr == "low" ? RoutePriority::kLow : pr == "high" ? RoutePriority::kHigh
                 : pr == "critical" ? RoutePriority::kCritical : RoutePriority::kNormal;
  }
  if (auto v = m.get("name")) {
    std::string name;
    if (readString(*v, m.child("name"), &name)) {
      if (!isName(name))
        fail(*v, m.child("name") + ": invalid name '" + name +
                     "' (letters, digits, '_', '-' and '.', at most 64 characters)");
      else
        r.name = name;
    }
  } else {
    fail(n, path + ": missing required key 'name'");
  }
  if (auto v = m.get("match")) loadMatch(*v, m.child("match"), r);
  loadRouteLua(m, path, r);

  auto upstream = m.get("upstream");
  auto direct = m.get("direct_response");
  if (upstream && direct) {
    fail(*direct, path + ": a route has either 'upstream' or 'direct_response', not both");
  } else if (!upstream && !direct && !m.get("aggregate")) {
    fail(n, path + ": missing 'upstream' (or 'direct_response')");
  }
  if (upstream) {
    std::string name;
    if (readString(*upstream, m.child("upstream"), &name)) {
      if (std::find(upstream_names_.begin(), upstream_names_.end(), name) ==
          upstream_names_.end()) {
        fail(*upstream, m.child("upstream") + ": unknown upstream '" + name + "'" +
                            suggestion(name, upstream_names_));
      } else {
        r.upstream = name;
      }
    }
  }
  if (direct) {
    Mapping d = mapping(*direct, m.child("direct_response"), {"status", "body"});
    if (d.valid) {
      if (auto s = d.get("status")) {
        readInt(*s, d.child("status"), 100, 599, &r.direct_status);
      } else {
        fail(*direct, d.path + ": missing required key 'status'");
      }
      if (auto b = d.get("body")) {
        // An empty body is legitimate here (e.g. a 204), so no readString().
        scalar(*b, d.child("body"), "a string", &r.direct_body);
      }
    }
  }
  if (auto v = m.get("connect_timeout")) readDuration(*v, m.child("connect_timeout"), &r.connect_timeout);
  if (auto v = m.get("send_timeout")) readDuration(*v, m.child("send_timeout"), &r.send_timeout);
  if (auto v = m.get("read_timeout")) readDuration(*v, m.child("read_timeout"), &r.read_timeout);
  if (auto v = m.get("max_body_size")) {
    uint64_t size = 0;
    if (readSize(*v, m.child("max_body_size"), &size, 0)) r.max_body_size = size;
  }
  if (auto v = m.get("limits")) {
    std::vector<Node> ids;
    if (sequence(*v, m.child("limits"), &ids, /*allow_scalar=*/true)) {
      for (size_t i = 0; i < ids.size(); i++) {
        std::string id;
        std::string p = m.child("limits") + "[" + std::to_string(i) + "]";
        if (!readString(ids[i], p, &id)) continue;
        if (std::find(limit_ids_.begin(), limit_ids_.end(), id) == limit_ids_.end()) {
          fail(ids[i], p + ": unknown limit rule '" + id + "'" + suggestion(id, limit_ids_));
          continue;
        }
        if (std::find(r.limit_names.begin(), r.limit_names.end(), id) != r.limit_names.end()) {
          fail(ids[i], p + ": rule '" + id + "' listed twice");
          continue;
        }
        r.limit_names.push_back(id);
      }
      if (r.limit_names.size() > 16)
        fail(*v, m.child("limits") + ": at most 16 limit rules per route");
    }
  }
}

void Loader::loadCache(const Node& n, Config& cfg) {
  Mapping m = mapping(n, "cache", {"memory", "shards", "status_header"});
  if (!m.valid) return;
  if (auto v = m.get("memory")) readSize(*v, m.child("memory"), &cfg.cache.memory, 64 * 1024);
  if (auto v = m.get("shards")) {
    if (readInt(*v, m.child("shards"), 1, 1024, &cfg.cache.shards) &&
        (cfg.cache.shards & (cfg.cache.shards - 1)) != 0)
      fail(*v, m.child("shards") + ": must be a power of two");
  }
  if (auto v = m.get("status_header")) {
    if (readString(*v, m.child("status_header"), &cfg.cache.status_header) &&
        !cfg.cache.status_header.empty() && !isToken(cfg.cache.status_header))
      fail(*v, m.child("status_header") + ": '" + cfg.cache.status_header + "' is not a valid header name");
  }
}

void Loader::loadDegradeSwitches(const Node& n, Config& cfg) {
  std::vector<Node> items;
  if (!sequence(n, "degrade_switches", &items)) return;
  for (size_t i = 0; i < items.size(); i++) {
    std::string path = "degrade_switches[" + std::to_string(i) + "]";
    Mapping m = mapping(items[i], path, {"name", "routes", "status", "body", "content_type", "from_cache"});
    if (!m.valid) continue;
    DegradeSwitchConfig sw;
    if (auto v = m.get("name")) {
      if (readString(*v, m.child("name"), &sw.name) && !isName(sw.name))
        fail(*v, m.child("name") + ": invalid name '" + sw.name + "' (letters, digits, '_', '-' and '.')");
    } else {
      fail(items[i], path + ": missing required key 'name'");
    }
    for (const auto& other : cfg.degrade_switches)
      if (!sw.name.empty() && other.name == sw.name) fail(items[i], path + ": duplicate switch name '" + sw.name + "'");
    if (auto v = m.get("routes")) {
      std::vector<Node> names;
      if (sequence(*v, m.child("routes"), &names, /*allow_scalar=*/true)) {
        for (size_t j = 0; j < names.size(); j++) {
          std::string rn;
          std::string p = m.child("routes") + "[" + std::to_string(j) + "]";
          if (!readString(names[j], p, &rn)) continue;
          bool found = false;
          for (auto& r : cfg.routes)
            if (r.name == rn) {
              found = true;
              r.degrade_switches.push_back(static_cast<int>(cfg.degrade_switches.size()));
            }
          if (!found) {
            std::vector<std::string> known;
            for (const auto& r : cfg.routes) known.push_back(r.name);
            fail(names[j], p + ": unknown route '" + rn + "'" + suggestion(rn, known));
          }
          sw.routes.push_back(rn);
        }
      }
    } else {
      fail(items[i], path + ": missing required key 'routes'");
    }
    if (auto v = m.get("status")) readInt(*v, m.child("status"), 200, 599, &sw.status);
    if (auto v = m.get("body")) scalar(*v, m.child("body"), "a string", &sw.body);
    if (auto v = m.get("content_type")) readString(*v, m.child("content_type"), &sw.content_type);
    if (auto v = m.get("from_cache")) readBool(*v, m.child("from_cache"), &sw.from_cache);
    cfg.degrade_switches.push_back(std::move(sw));
  }
}

bool Loader::readNameList(const Node& n, const std::string& path, std::vector<std::string>* out) {
  std::vector<Node> items;
  if (!sequence(n, path, &items, /*allow_scalar=*/true)) return false;
  bool ok = true;
  for (size_t i = 0; i < items.size(); i++) {
    std::string v;
    if (readString(items[i], path + "[" + std::to_string(i) + "]", &v)) out->push_back(v);
    else ok = false;
  }
  return ok;
}

void Loader::loadRouteCache(const Node& n, const std::string& path, RouteConfig& r) {
  auto rc = std::make_shared<RouteCacheConfig>();
  Mapping m = mapping(n, path,
                      {"ttl", "max_stale", "lock_timeout", "statuses", "max_entry_size", "hot_only",
                       "allow_set_cookie", "allow_authorization", "honor_origin_cache_control",
                       "serve_stale_on_error", "key", "vary"});
  if (!m.valid) return;
  auto& p = rc->policy;
  if (auto v = m.get("ttl")) readDuration(*v, m.child("ttl"), &p.ttl);
  else fail(n, path + ": missing required key 'ttl'");
  if (auto v = m.get("max_stale")) readDuration(*v, m.child("max_stale"), &p.max_stale, /*allow_zero=*/true);
  if (auto v = m.get("lock_timeout")) readDuration(*v, m.child("lock_timeout"), &rc->lock_timeout);
  if (auto v = m.get("statuses")) {
    std::vector<Node> items;
    if (sequence(*v, m.child("statuses"), &items, /*allow_scalar=*/true)) {
      p.statuses.reset();
      for (size_t i = 0; i < items.size(); i++) {
        int st = 0;
        if (readInt(items[i], m.child("statuses") + "[" + std::to_string(i) + "]", 100, 599, &st)) p.statuses.set(st);
      }
    }
  }
  if (auto v = m.get("max_entry_size")) {
    uint64_t size = 0;
    if (readSize(*v, m.child("max_entry_size"), &size, 0)) p.max_entry_bytes = size;
  }
  if (auto v = m.get("hot_only")) readBool(*v, m.child("hot_only"), &rc->hot_only);
  if (auto v = m.get("allow_set_cookie")) readBool(*v, m.child("allow_set_cookie"), &p.allow_set_cookie);
  if (auto v = m.get("allow_authorization")) readBool(*v, m.child("allow_authorization"), &p.allow_authorization);
  if (auto v = m.get("honor_origin_cache_control"))
    readBool(*v, m.child("honor_origin_cache_control"), &p.honor_origin_cache_control);
  if (auto v = m.get("serve_stale_on_error")) readBool(*v, m.child("serve_stale_on_error"), &rc->serve_stale_on_error);
  auto& k = rc->key;
  if (auto v = m.get("key")) {
    Mapping km = mapping(*v, m.child("key"), {"host", "query", "headers", "cookies"});
    if (km.valid) {
      if (auto x = km.get("host")) readBool(*x, km.child("host"), &k.include_host);
      if (auto x = km.get("query")) {
        if (x->IsScalar() && (x->Scalar() == "all" || x->Scalar() == "none")) {
          k.all_query_args = x->Scalar() == "all";
        } else {
          k.all_query_args = false;
          readNameList(*x, km.child("query"), &k.query_args);
        }
      }
      if (auto x = km.get("headers")) readNameList(*x, km.child("headers"), &k.headers);
      if (auto x = km.get("cookies")) readNameList(*x, km.child("cookies"), &k.cookies);
    }
  }
  if (auto v = m.get("vary")) readNameList(*v, m.child("vary"), &k.vary);
  k.normalize();
  if (const char* invalid = cache::validateCachePolicy(p, k)) fail(n, path + ": " + invalid);
  r.cache = rc;
}

void Loader::loadMatch(const Node& n, const std::string& path, RouteConfig& r) {
  Mapping m = mapping(n, path, {"host", "path", "methods"});
  if (!m.valid) return;
  if (auto v = m.get("host")) {
    std::vector<Node> items;
    if (sequence(*v, m.child("host"), &items, /*allow_scalar=*/true)) {
      for (size_t i = 0; i < items.size(); i++) {
        std::string hp = v->IsSequence() ? m.child("host") + "[" + std::to_string(i) + "]"
                                         : m.child("host");
        std::string h;
        if (!readString(items[i], hp, &h)) continue;
        h = toLower(h);
        // '*' only as a leading "*." label: the router implements suffix wildcards, nothing else.
        std::string_view rest = h;
        if (rest.substr(0, 2) == "*.") rest.remove_prefix(2);
        bool ok = !rest.empty();
        for (char c : rest)
          ok &= c > ' ' && c != '*' && c != '/' && c != 0x7f;
        if (!ok) {
          fail(items[i], hp + ": expected a host name like example.com or *.example.com, got '" +
                             h + "'");
          continue;
        }
        r.hosts.push_back(h);
      }
    }
  }
  if (auto v = m.get("path")) {
    Mapping p = mapping(*v, m.child("path"), {"exact", "prefix", "regex"});
    if (p.valid) {
      auto exact = p.get("exact");
      auto prefix = p.get("prefix");
      auto regex = p.get("regex");
      int count = !!exact + !!prefix + !!regex;
      if (count != 1) {
        fail(*v, p.path + ": expected exactly one of exact, prefix or regex");
      } else if (exact || prefix) {
        const Node& x = exact ? *exact : *prefix;
        std::string key = p.child(exact ? "exact" : "prefix");
        std::string s;
        if (readString(x, key, &s)) {
          if (s.front() != '/') {
            fail(x, key + ": must start with '/', got '" + s + "'");
          } else {
            r.path_kind = exact ? PathMatchKind::kExact : PathMatchKind::kPrefix;
            r.path = s;
          }
        }
      } else {
        std::string s;
        if (readString(*regex, p.child("regex"), &s)) {
          RE2::Options opts;
          opts.set_log_errors(false);
          auto re = std::make_shared<const re2::RE2>(s, opts);
          if (!re->ok()) {
            fail(*regex, p.child("regex") + ": invalid regex: " + re->error());
          } else {
            r.path_kind = PathMatchKind::kRegex;
            r.path = s;
            r.regex = std::move(re);
          }
        }
      }
    }
  }
  if (auto v = m.get("methods")) {
    std::vector<Node> items;
    if (sequence(*v, m.child("methods"), &items, /*allow_scalar=*/true)) {
      for (size_t i = 0; i < items.size(); i++) {
        std::string mp = m.child("methods") + "[" + std::to_string(i) + "]";
        std::string s;
        if (!scalar(items[i], mp, "an HTTP method", &s)) continue;
        if (!isToken(s)) {
          fail(items[i], mp + ": '" + s + "' is not a valid HTTP method");
          continue;
        }
        for (auto& c : s) c = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 32) : c;
        r.methods.push_back(s);
      }
    }
  }
}

// Where each document of a YAML stream starts; the events inside are not needed.
class DocumentStarts : public YAML::EventHandler {
 public:
  std::vector<YAML::Mark> marks;
  void OnDocumentStart(const YAML::Mark& m) override { marks.push_back(m); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
};

ConfigLoadResult finish(Loader& loader, std::shared_ptr<Config> cfg) {
  ConfigLoadResult result;
  auto& errors = loader.errors();
  // File order reads best; errors without a position (missing sections) go first.
  std::stable_sort(errors.begin(), errors.end(), [](const ConfigError& a, const ConfigError& b) {
    return std::make_pair(a.line, a.col) < std::make_pair(b.line, b.col);
  });
  result.errors = std::move(errors);
  cfg->inputs_stamp = loader.inputsStamp();
  if (result.errors.empty()) result.config = std::move(cfg);
  return result;
}

}  // namespace config_detail

using config_detail::Loader;
using config_detail::finish;
using config_detail::sha256Hex;
using config_detail::DocumentStarts;

ConfigLoadResult loadConfigString(const std::string& yaml, const std::string& name) {
  Loader loader(name);
  auto cfg = std::make_shared<Config>();
  cfg->source_path = name;
  cfg->hash = sha256Hex(yaml);
  try {
    // Not YAML::LoadAll: yaml-cpp 0.7 never returns (and allocates without end) on a stream
    // where a node starts with ',' (jbeder/yaml-cpp#1040, found by tests/fuzz config). Count at
    // most two documents; one starting where the previous one did means the parser is stuck.
    DocumentStarts starts;
    std::istringstream in(yaml);
    YAML::Parser parser(in);
    while (starts.marks.size() < 2 && parser.HandleNextDocument(starts)) {
    }
    const auto& docs = starts.marks;
    if (docs.empty()) {
      loader.failNoPos("the configuration is empty; at least one listener is required");
    } else if (docs.size() > 1 && docs[1].pos == docs[0].pos) {
      size_t at = static_cast<size_t>(docs[0].pos);
      loader.fail(docs[0], at < yaml.size() ? "YAML syntax error: unexpected '" +
                                                  std::string(1, yaml[at]) + "'"
                                            : std::string("YAML syntax error"));
    } else {
      if (docs.size() > 1) loader.fail(docs[1], "only one YAML document per file is allowed");
      loader.load(YAML::Load(yaml), *cfg);
    }
  } catch (const YAML::ParserException& e) {
    loader.fail(e.mark, "YAML syntax error: " + e.msg);
  } catch (const YAML::Exception& e) {
    // Not expected once the document parsed (we read scalars only), but never let one escape.
    loader.fail(e.mark, "cannot load configuration: " + e.msg);
  }
  return finish(loader, std::move(cfg));
}

ConfigLoadResult loadConfigFile(const std::string& path) {
  FILE* f = fopen(path.c_str(), "rb");
  if (!f) {
    ConfigLoadResult r;
    r.errors.push_back(ConfigError{path, 0, 0, std::string("cannot open: ") + strerror(errno)});
    return r;
  }
  std::string bytes;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) bytes.append(buf, n);
  bool read_error = ferror(f);
  fclose(f);
  if (read_error) {
    ConfigLoadResult r;
    r.errors.push_back(ConfigError{path, 0, 0, "cannot read file"});
    return r;
  }
  return loadConfigString(bytes, path);
}

}  // namespace sluice
