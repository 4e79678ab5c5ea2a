// The `limits:` section and per-route `limits:` lists (proxy/config/config_loader.cc): the happy
// path fills LimitRuleConfig as docs/configuration.md says, and every mistake is one error at the
// offending node, as file:line:col.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "proxy/config/config_loader.h"

namespace sluice {
namespace {

// Lines 1-4; the limits section starts on line 5, its first rule's "- id" on line 7.
const char* kHead = R"(listeners: [{address: 127.0.0.1:8080}]
upstreams:
  app:
    servers: [{address: 127.0.0.1:9080}]
limits:
  rules:
)";

std::string joinErrors(const std::vector<ConfigError>& errors) {
  std::string out;
  for (const auto& e : errors) out += e.format() + "\n";
  return out;
}

ConfigPtr loadOk(const std::string& yaml) {
  ConfigLoadResult r = loadConfigString(yaml, "test.yaml");
  INFO(joinErrors(r.errors));
  REQUIRE(r.ok());
  return r.config;
}

// The one error a broken config is expected to produce.
ConfigError loadError(const std::string& yaml) {
  ConfigLoadResult r = loadConfigString(yaml, "test.yaml");
  INFO(joinErrors(r.errors));
  REQUIRE_FALSE(r.ok());
  REQUIRE(r.config == nullptr);
  REQUIRE(r.errors.size() == 1);
  return r.errors[0];
}

// kHead + `rules` (each line indented under `rules:`) + a route using them.
std::string withRules(const std::string& rules, const std::string& route_limits = "") {
  std::string y = std::string(kHead) + rules + "routes:\n  - name: api\n    upstream: app\n";
  if (!route_limits.empty()) y += "    limits: " + route_limits + "\n";
  return y;
}

const LimitRuleConfig& ruleNamed(const Config& c, const std::string& id) {
  for (const auto& r : c.limit_rules)
    if (r.id == id) return r;
  FAIL("no rule " << id);
  return c.limit_rules.front();
}

TEST_CASE("limits: the documented example loads with every field", "[config][limits]") {
  ConfigPtr c = loadOk(withRules(R"y(    - id: per-ip
      key: ip
      rate: 5r/s
      burst: 2
      nodelay: true
    - id: member-item
      key: [member, item]
      algorithm: sliding_window
      limit: 3
      window: 1m
    - id: ua-shadow
      key: user_agent
      rate: 1r/m
      action: shadow
    - id: active
      key: route
      algorithm: concurrency
      max_active: 1
    - id: custom
      key: [member=header:X-Member, item=query:id, "item=path:^/p/([^/]+)", header:X-Api-Key, cookie:sid, query:q, device, global]
      rate: 2r/100ms
      delay: 3
      action: delay
      max_delay: 250ms
      count_rejected: true
      memory: 1m
      missing_key: fallback:anon
      ipv6_prefix: 48
      rate_limit_headers: false
      status: 503
      body: '{"busy":true}'
      content_type: application/problem+json
    - id: fallback
      key: global
      rate: 100r/s
      action: degrade
      body: cached
)y",
                                 "[member-item, per-ip, ua-shadow, active]"));
  REQUIRE(c->limit_rules.size() == 6);

  const auto& ip = ruleNamed(*c, "per-ip");
  CHECK(ip.algorithm == LimitAlgorithm::kLeakyBucket);  // the default
  REQUIRE(ip.key.size() == 1);
  CHECK(ip.key[0].kind == LimitKeyKind::kIp);
  CHECK(ip.key_signature == "ip");
  CHECK(ip.requests == 5);
  CHECK(ip.period == kSeconds);
  CHECK(ip.burst == 2);
  CHECK(ip.nodelay);
  CHECK(ip.delay == 0);
  // Defaults of config.h.
  CHECK(ip.action == LimitAction::kReject);
  CHECK(ip.status == 429);
  CHECK(ip.body.empty());
  CHECK(ip.content_type == "application/json");
  CHECK(ip.max_delay == 5 * kSeconds);
  CHECK_FALSE(ip.count_rejected);
  CHECK(ip.memory == 16 * 1024 * 1024);
  CHECK(ip.skip_missing);
  CHECK(ip.fallback_key.empty());
  CHECK(ip.ipv6_prefix == 64);
  CHECK(ip.rate_limit_headers == RateLimitHeaders::kDraft);
  CHECK_FALSE(ip.nginx_resolution);
  CHECK(ip.items.empty());
  CHECK_FALSE(ip.only_hot);

  const auto& mi = ruleNamed(*c, "member-item");
  CHECK(mi.algorithm == LimitAlgorithm::kSlidingWindow);
  REQUIRE(mi.key.size() == 2);
  CHECK(mi.key[0].kind == LimitKeyKind::kMember);
  CHECK(mi.key[0].source == "cookie:member");  // default member source
  CHECK(mi.key[1].kind == LimitKeyKind::kItem);
  CHECK_THAT(mi.key[1].source, Catch::StartsWith("path:"));  // default item source: a path capture
  CHECK(mi.key[1].path_regex != nullptr);
  CHECK(mi.key_signature == "member+item");
  CHECK(mi.limit == 3);
  CHECK(mi.window == 60 * kSeconds);

  const auto& ua = ruleNamed(*c, "ua-shadow");
  CHECK(ua.key[0].kind == LimitKeyKind::kUserAgent);
  CHECK(ua.requests == 1);
  CHECK(ua.period == 60 * kSeconds);
  CHECK(ua.action == LimitAction::kShadow);

  const auto& act = ruleNamed(*c, "active");
  CHECK(act.algorithm == LimitAlgorithm::kConcurrency);
  CHECK(act.key[0].kind == LimitKeyKind::kRoute);
  CHECK(act.max_active == 1);

  const auto& cu = ruleNamed(*c, "custom");
  REQUIRE(cu.key.size() == 8);
  CHECK(cu.key[0].kind == LimitKeyKind::kMember);
  CHECK(cu.key[0].source == "header:X-Member");
  CHECK(cu.key[1].kind == LimitKeyKind::kItem);
  CHECK(cu.key[1].source == "query:id");
  CHECK(cu.key[1].path_regex == nullptr);
  CHECK(cu.key[2].kind == LimitKeyKind::kItem);
  CHECK(cu.key[2].source == "path:^/p/([^/]+)");
  REQUIRE(cu.key[2].path_regex != nullptr);
  CHECK(cu.key[3].kind == LimitKeyKind::kHeader);
  CHECK(cu.key[3].source == "header:X-Api-Key");
  CHECK(cu.key[4].kind == LimitKeyKind::kCookie);
  CHECK(cu.key[4].source == "cookie:sid");
  CHECK(cu.key[5].kind == LimitKeyKind::kQuery);
  CHECK(cu.key[5].source == "query:q");
  CHECK(cu.key[6].kind == LimitKeyKind::kDevice);
  CHECK(cu.key[6].source == "cookie:device");
  CHECK(cu.key[7].kind == LimitKeyKind::kGlobal);
  CHECK(cu.requests == 2);
  CHECK(cu.period == 100 * kMillis);
  CHECK(cu.delay == 3);
  CHECK_FALSE(cu.nodelay);
  CHECK(cu.action == LimitAction::kDelay);
  CHECK(cu.max_delay == 250 * kMillis);
  CHECK(cu.count_rejected);
  CHECK(cu.memory == 1024 * 1024);
  CHECK_FALSE(cu.skip_missing);
  CHECK(cu.fallback_key == "anon");
  CHECK(cu.ipv6_prefix == 48);
  CHECK(cu.rate_limit_headers == RateLimitHeaders::kOff);
  CHECK(cu.status == 503);
  CHECK(cu.body == "{\"busy\":true}");
  CHECK(cu.content_type == "application/problem+json");

  const auto& fb = ruleNamed(*c, "fallback");
  CHECK(fb.action == LimitAction::kDegrade);
  CHECK(fb.status == 200);  // degrade answers 200 unless told otherwise
  CHECK(fb.body == "cached");

  // The route's list, in the order written, resolved to indexes into limit_rules.
  REQUIRE(c->routes.size() == 1);
  const auto& route = c->routes[0];
  CHECK(route.limit_names == std::vector<std::string>{"member-item", "per-ip", "ua-shadow", "active"});
  REQUIRE(route.limits.size() == 4);
  for (size_t i = 0; i < route.limits.size(); i++)
    CHECK(c->limit_rules[static_cast<size_t>(route.limits[i])].id == route.limit_names[i]);
}

TEST_CASE("limits: rates in every unit, a single route limit as a scalar", "[config][limits]") {
  ConfigPtr c = loadOk(withRules(R"(    - {id: s, key: ip, rate: 10r/s}
    - {id: m, key: ip, rate: 30r/m}
    - {id: h, key: ip, rate: 5r/h}
    - {id: d, key: ip, rate: 1000r/d}
    - {id: ms, key: ip, rate: 3r/250ms}
)",
                                 "s"));
  CHECK(ruleNamed(*c, "s").period == kSeconds);
  CHECK(ruleNamed(*c, "m").requests == 30);
  CHECK(ruleNamed(*c, "m").period == 60 * kSeconds);
  CHECK(ruleNamed(*c, "h").period == 3600 * kSeconds);
  CHECK(ruleNamed(*c, "d").period == 86400 * kSeconds);
  CHECK(ruleNamed(*c, "ms").requests == 3);
  CHECK(ruleNamed(*c, "ms").period == 250 * kMillis);
  CHECK(c->routes[0].limit_names == std::vector<std::string>{"s"});
  CHECK(c->routes[0].limits == std::vector<int>{0});
}

TEST_CASE("limits: a config without limits has no rules and routes have none", "[config][limits]") {
  ConfigPtr c = loadOk(
      "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  app:\n"
      "    servers: [{address: 127.0.0.1:9080}]\nroutes:\n  - name: api\n    upstream: app\n");
  CHECK(c->limit_rules.empty());
  CHECK(c->routes[0].limits.empty());
}

TEST_CASE("limits: the key signature follows the key definition", "[config][limits]") {
  ConfigPtr c = loadOk(withRules(R"(    - {id: a, key: [member, item], rate: 1r/s}
    - {id: b, key: "member=header:X-Member", rate: 1r/s}
    - {id: c, key: [ip], rate: 1r/s}
)"));
  CHECK(ruleNamed(*c, "a").key_signature == "member+item");
  CHECK(ruleNamed(*c, "b").key_signature == "member=header:X-Member");
  CHECK(ruleNamed(*c, "c").key_signature == "ip");  // a one-element list is the scalar
}

TEST_CASE("limits: an unknown key kind is an error at the part, with a suggestion",
          "[config][limits]") {
  ConfigError e = loadError(withRules(R"(    - id: ua
      key: usr_agent
      rate: 1r/s
)"));
  CHECK(e.format() ==
        "test.yaml:8:12: limits.rules[0].key[0]: unknown key kind 'usr_agent' (did you mean "
        "'user_agent'?) (ip, user_agent, member, device, item, route, upstream, global, header:NAME, "
        "cookie:NAME, query:NAME, jwt:CLAIM, lua:NAME)");

  // In a composite key: the position of the part; nothing close, no suggestion.
  ConfigError far = loadError(withRules(R"(    - id: mi
      key: [member, sku]
      rate: 1r/s
)"));
  CHECK(far.line == 8);
  CHECK(far.col == 21);
  CHECK(far.message ==
        "limits.rules[0].key[1]: unknown key kind 'sku' (ip, user_agent, member, device, item, "
        "route, upstream, global, header:NAME, cookie:NAME, query:NAME, jwt:CLAIM, lua:NAME)");
}

TEST_CASE("limits: key sources are validated", "[config][limits]") {
  ConfigError src = loadError(withRules("    - {id: m, key: \"member=body:x\", rate: 1r/s}\n"));
  CHECK(src.format() ==
        "test.yaml:7:20: limits.rules[0].key[0]: source 'body:x' must be header:NAME, "
        "cookie:NAME, query:NAME, path:REGEX, jwt:CLAIM or lua:NAME");
  ConfigError empty_name = loadError(withRules("    - {id: m, key: \"header:\", rate: 1r/s}\n"));
  CHECK_THAT(empty_name.message, Catch::Contains("source 'header:' must be header:NAME"));
  ConfigError no_source = loadError(withRules("    - {id: m, key: \"ip=header:X\", rate: 1r/s}\n"));
  CHECK(no_source.message == "limits.rules[0].key[0]: 'ip' takes no source");
  ConfigError empty_key = loadError(withRules("    - {id: m, key: [], rate: 1r/s}\n"));
  CHECK(empty_key.format() == "test.yaml:7:20: limits.rules[0].key: at least one key part is required");
  ConfigError missing_key = loadError(withRules("    - {id: m, rate: 1r/s}\n"));
  CHECK(missing_key.format() == "test.yaml:7:7: limits.rules[0]: missing required key 'key'");
}

TEST_CASE("limits: a bad path regex or one without a capture is an error at the part",
          "[config][limits]") {
  ConfigError bad = loadError(withRules(R"(    - id: item
      key: "item=path:^/p/(["
      rate: 1r/s
)"));
  CHECK(bad.line == 8);
  CHECK(bad.col == 12);
  CHECK_THAT(bad.message, Catch::StartsWith("limits.rules[0].key[0]: invalid regex '^/p/([': "));
  CHECK_THAT(bad.message, Catch::Contains("missing ]"));

  ConfigError nocap = loadError(withRules(R"(    - id: item
      key: ["item=path:^/p/[^/]+"]
      rate: 1r/s
)"));
  CHECK(nocap.format() ==
        "test.yaml:8:13: limits.rules[0].key[0]: regex '^/p/[^/]+' needs a capture group for "
        "the value");
}

TEST_CASE("limits: a bad rate is an error at the value", "[config][limits]") {
  ConfigError e = loadError(withRules(R"(    - id: ip
      key: ip
      rate: 10/s
)"));
  CHECK(e.format() ==
        "test.yaml:9:13: limits.rules[0].rate: expected a rate like 10r/s, 30r/m or 5r/h, got "
        "'10/s'");
  for (const char* bad : {"0r/s", "r/s", "10r/", "10r/fortnight", "10r/0s", "-1r/s", "ten r/s"}) {
    INFO(bad);
    ConfigError b = loadError(withRules(std::string("    - {id: ip, key: ip, rate: \"") + bad + "\"}\n"));
    CHECK_THAT(b.message, Catch::StartsWith("limits.rules[0].rate: expected a rate like 10r/s"));
  }
  ConfigError list = loadError(withRules("    - {id: ip, key: ip, rate: [10r/s]}\n"));
  CHECK_THAT(list.message, Catch::StartsWith("limits.rules[0].rate: "));
}

TEST_CASE("limits: each algorithm needs its own numbers", "[config][limits]") {
  ConfigError rate = loadError(withRules(R"(    - id: ip
      key: ip
      burst: 5
)"));
  CHECK(rate.format() == "test.yaml:7:7: limits.rules[0]: a leaky_bucket rule needs 'rate' (e.g. 10r/s)");

  ConfigError limit = loadError(withRules(R"(    - id: quota
      key: member
      algorithm: sliding_window
      window: 1h
)"));
  CHECK(limit.format() ==
        "test.yaml:7:7: limits.rules[0]: a sliding_window rule needs 'limit' (requests per window)");

  ConfigError active = loadError(withRules(R"(    - id: act
      key: route
      algorithm: concurrency
)"));
  CHECK(active.format() == "test.yaml:7:7: limits.rules[0]: a concurrency rule needs 'max_active'");

  ConfigError algo = loadError(withRules(R"(    - id: ip
      key: ip
      algorithm: leaky-bucket
      rate: 1r/s
)"));
  CHECK(algo.format() ==
        "test.yaml:9:18: limits.rules[0].algorithm: unknown algorithm 'leaky-bucket' (did you "
        "mean 'leaky_bucket'?)");
}

TEST_CASE("limits: numbers the limiter cannot represent are refused at the rule",
          "[config][limits]") {
  // (burst + 1) x 1 day is over 100 years of nanoseconds: the bucket arithmetic would overflow.
  ConfigError deep = loadError(withRules("    - {id: r, key: ip, rate: 1r/d, burst: 1000000}\n"));
  CHECK(deep.format() ==
        "test.yaml:7:7: limits.rules[0]: burst times the request interval exceeds 100 years");
  CHECK(loadError(withRules("    - {id: r, key: ip, rate: 1r/d, delay: 1000000}\n")).message ==
        "limits.rules[0]: burst times the request interval exceeds 100 years");
  CHECK(loadError(withRules("    - {id: r, key: ip, rate: 2r/1ns}\n")).message ==
        "limits.rules[0]: rate above 1 request per nanosecond");
  CHECK(loadError(withRules("    - {id: r, key: ip, algorithm: sliding_window, limit: 5, "
                            "window: 500us}\n"))
            .message == "limits.rules[0]: window must be at least 1ms");
  // The edges that are fine.
  loadOk(withRules("    - {id: r, key: ip, rate: 1r/d, burst: 36000}\n"
                   "    - {id: s, key: ip, rate: 1000000000r/s}\n"
                   "    - {id: t, key: ip, algorithm: sliding_window, limit: 4000000000, window: 1ms}\n"));
}

TEST_CASE("limits: delay is for leaky buckets only", "[config][limits]") {
  ConfigError conc = loadError(withRules(R"(    - id: act
      key: route
      algorithm: concurrency
      max_active: 2
      action: delay
)"));
  CHECK(conc.format() == "test.yaml:7:7: limits.rules[0]: a concurrency rule cannot 'delay'");

  ConfigError window = loadError(withRules(R"(    - id: quota
      key: member
      algorithm: sliding_window
      limit: 10
      action: delay
)"));
  CHECK(window.format() == "test.yaml:7:7: limits.rules[0]: action 'delay' needs algorithm leaky_bucket");

  ConfigError action = loadError(withRules("    - {id: ip, key: ip, rate: 1r/s, action: rejet}\n"));
  CHECK(action.message ==
        "limits.rules[0].action: unknown action 'rejet' (did you mean 'reject'?)");
}

TEST_CASE("limits: other fields are type- and range-checked at the value", "[config][limits]") {
  auto one = [](const std::string& fields) {
    return loadError(withRules("    - {id: ip, key: ip, rate: 1r/s, " + fields + "}\n"));
  };
  CHECK_THAT(one("burst: -1").message, Catch::StartsWith("limits.rules[0].burst: "));
  CHECK_THAT(one("nodelay: yes").message, Catch::StartsWith("limits.rules[0].nodelay: "));
  CHECK_THAT(one("status: 99").message, Catch::StartsWith("limits.rules[0].status: "));
  CHECK_THAT(one("max_delay: 5").message,
             Catch::Contains("limits.rules[0].max_delay: expected a duration like 250ms or 5s"));
  CHECK_THAT(one("memory: 1k").message, Catch::StartsWith("limits.rules[0].memory: "));
  CHECK_THAT(one("ipv6_prefix: 129").message, Catch::StartsWith("limits.rules[0].ipv6_prefix: "));
  CHECK(one("missing_key: \"fallback:\"").message ==
        "limits.rules[0].missing_key: expected 'skip' or 'fallback:NAME', got 'fallback:'");
  CHECK(one("missing_key: ignore").format() ==
        "test.yaml:7:50: limits.rules[0].missing_key: expected 'skip' or 'fallback:NAME', got "
        "'ignore'");
  ConfigError unknown = one("brust: 5");
  CHECK(unknown.message == "unknown key 'brust' in limits.rules[0] (did you mean 'burst'?)");
  ConfigError id = loadError(withRules("    - {id: \"per ip\", key: ip, rate: 1r/s}\n"));
  CHECK_THAT(id.message, Catch::StartsWith("limits.rules[0].id: invalid id 'per ip'"));
  ConfigError noid = loadError(withRules("    - {key: ip, rate: 1r/s}\n"));
  CHECK(noid.format() == "test.yaml:7:7: limits.rules[0]: missing required key 'id'");
  ConfigError section = loadError(std::string(kHead) + "    - {id: a, key: ip, rate: 1r/s}\n  rule: []\n");
  CHECK(section.message == "unknown key 'rule' in limits (did you mean 'rules'?)");
}

TEST_CASE("limits: a duplicate rule id is an error at the second rule", "[config][limits]") {
  ConfigError e = loadError(withRules(R"(    - id: per-ip
      key: ip
      rate: 5r/s
    - id: per-ip
      key: user_agent
      rate: 1r/s
)"));
  CHECK(e.format() == "test.yaml:10:7: limits.rules[1]: duplicate rule id 'per-ip'");
}

TEST_CASE("limits: a route naming an unknown rule points at the name", "[config][limits]") {
  ConfigLoadResult r = loadConfigString(
      withRules("    - {id: per-ip, key: ip, rate: 5r/s}\n", "[per-ip, perip]"), "test.yaml");
  REQUIRE(r.errors.size() == 1);
  // routes: line 8, "  - name: api" 9, "    upstream: app" 10, "    limits: [per-ip, perip]" 11.
  CHECK(r.errors[0].format() ==
        "test.yaml:11:22: routes[0].limits[1]: unknown limit rule 'perip' (did you mean "
        "'per-ip'?)");

  ConfigError far = loadError(withRules("    - {id: per-ip, key: ip, rate: 5r/s}\n"
                                        "    - {id: member, key: member, rate: 5r/s}\n",
                                        "checkout-quota"));
  CHECK(far.format() == "test.yaml:12:13: routes[0].limits[0]: unknown limit rule 'checkout-quota'");

  // Block-style list: the position of the item.
  std::string block = std::string(kHead) +
                      "    - {id: per-ip, key: ip, rate: 5r/s}\n"
                      "routes:\n  - name: api\n    upstream: app\n    limits:\n"
                      "      - per-ip\n      - nope\n";
  ConfigError blk = loadError(block);
  CHECK(blk.format() == "test.yaml:13:9: routes[0].limits[1]: unknown limit rule 'nope'");
}

TEST_CASE("limits: a rule listed twice on one route is an error at the second", "[config][limits]") {
  ConfigError e = loadError(withRules("    - {id: per-ip, key: ip, rate: 5r/s}\n",
                                      "[per-ip, per-ip]"));
  CHECK(e.format() == "test.yaml:11:22: routes[0].limits[1]: rule 'per-ip' listed twice");
}

TEST_CASE("limits: a route naming a broken rule gets no second, misleading error",
          "[config][limits]") {
  // The rule's own error is the one to fix; "unknown limit rule" on top would send the operator
  // looking for a rule that is right there.
  ConfigError e = loadError(withRules(R"(    - id: per-ip
      key: ip
      rate: 10/s
)",
                                      "[per-ip]"));
  CHECK(e.message ==
        "limits.rules[0].rate: expected a rate like 10r/s, 30r/m or 5r/h, got '10/s'");
}

TEST_CASE("limits: at most 16 rules per route", "[config][limits]") {
  std::string rules, names;
  for (int i = 0; i < 17; i++) {
    rules += "    - {id: r" + std::to_string(i) + ", key: ip, rate: 1r/s}\n";
    names += (i ? ", r" : "r") + std::to_string(i);
  }
  ConfigError e = loadError(withRules(rules, "[" + names + "]"));
  CHECK(e.message == "routes[0].limits: at most 16 limit rules per route");
  loadOk(withRules(rules, "[" + names.substr(0, names.rfind(',')) + "]"));
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

TEST_CASE("limits: hot items, per-item limits, only_hot", "[config][limits]") {
  std::string y = std::string(kHead) + R"y(    - id: item-default
      key: item
      rate: 100r/s
      burst: 10
      items:
        "42": {rate: 1000r/s, burst: 50}
        sku-7: {rate: 5r/s}
    - id: item-hot
      key: item
      rate: 20r/s
      only_hot: true
  hot_items:
    window: 5s
    hot_rate: 50
    top_k: 8
routes:
  - name: api
    upstream: app
    limits: [item-default, item-hot]
)y";
  ConfigPtr c = loadOk(y);
  const auto& d = ruleNamed(*c, "item-default");
  REQUIRE(d.items.size() == 2);
  CHECK(d.items[0].item == "42");
  CHECK(d.items[0].requests == 1000);
  CHECK(d.items[0].burst == 50);
  CHECK(d.items[1].item == "sku-7");
  CHECK(d.items[1].requests == 5);
  CHECK(ruleNamed(*c, "item-hot").only_hot);
  CHECK(c->hot_items.enabled);
  CHECK(c->hot_items.window == 5 * kSeconds);
  CHECK(c->hot_items.hot_rate == 50.0);
  CHECK(c->hot_items.top_k == 8);
  CHECK(c->hot_items.source.kind == LimitKeyKind::kItem);

  ConfigError no_item = loadError(withRules("    - {id: m, key: ip, rate: 1r/s, items: {\"1\": {rate: 2r/s}}}\n"));
  CHECK_THAT(no_item.message, Catch::Contains("per-item limits need an 'item' part"));
  ConfigError no_rate = loadError(withRules("    - {id: m, key: item, rate: 1r/s, items: {\"1\": {burst: 2}}}\n"));
  CHECK_THAT(no_rate.message, Catch::Contains("limits.rules[0].items.1: needs 'rate'"));
  ConfigError hot_ip = loadError(withRules("    - {id: m, key: ip, rate: 1r/s, only_hot: true}\n"));
  CHECK_THAT(hot_ip.message, Catch::Contains("only_hot needs an 'item' part"));
}

TEST_CASE("limits: redirect, legacy headers, nginx resolution", "[config][limits]") {
  ConfigPtr c = loadOk(withRules(
      "    - {id: q, key: ip, rate: 1r/s, action: redirect, location: \"https://shop.example/queue\"}\n"
      "    - {id: l, key: ip, rate: 1r/s, rate_limit_headers: legacy, resolution: nginx}\n"));
  const auto& q = ruleNamed(*c, "q");
  CHECK(q.action == LimitAction::kRedirect);
  CHECK(q.status == 302);
  CHECK(q.location == "https://shop.example/queue");
  const auto& l = ruleNamed(*c, "l");
  CHECK(l.rate_limit_headers == RateLimitHeaders::kLegacy);
  CHECK(l.nginx_resolution);
  ConfigError no_loc = loadError(withRules("    - {id: q, key: ip, rate: 1r/s, action: redirect}\n"));
  CHECK(no_loc.format() == "test.yaml:7:7: limits.rules[0]: action 'redirect' needs 'location'");
  ConfigError bad_hdr = loadError(withRules("    - {id: q, key: ip, rate: 1r/s, rate_limit_headers: old}\n"));
  CHECK_THAT(bad_hdr.message, Catch::Contains("expected true, false, draft or legacy, got 'old'"));
  ConfigError bad_res = loadError(withRules("    - {id: q, key: ip, rate: 1r/s, resolution: us}\n"));
  CHECK_THAT(bad_res.message, Catch::Contains("expected one of ns, nginx"));
}

TEST_CASE("limits: circuit breaker rules", "[config][limits]") {
  ConfigPtr c = loadOk(withRules(
      "    - {id: b, key: upstream, algorithm: circuit_breaker, threshold: 0.5, min_requests: 5,\n"
      "       window: 2s, cooldown: 3s, half_open_probes: 2, action: degrade, body: \"{}\"}\n"
      "    - {id: s, key: route, algorithm: circuit_breaker, strategy: slow_call_ratio, slow_call: 200ms}\n"));
  const auto& b = ruleNamed(*c, "b");
  CHECK(b.algorithm == LimitAlgorithm::kCircuitBreaker);
  CHECK(b.breaker.threshold == 0.5);
  CHECK(b.breaker.min_requests == 5);
  CHECK(b.breaker.window == 2 * kSeconds);
  CHECK(b.breaker.cooldown == 3 * kSeconds);
  CHECK(b.breaker.half_open_probes == 2);
  CHECK(b.action == LimitAction::kDegrade);
  const auto& s = ruleNamed(*c, "s");
  CHECK(s.breaker.slow_calls);
  CHECK(s.breaker.slow_call == 200 * kMillis);
  CHECK(s.status == 503);
  ConfigError key = loadError(withRules("    - {id: b, key: ip, algorithm: circuit_breaker}\n"));
  CHECK_THAT(key.message, Catch::Contains("a circuit_breaker rule's key is 'route' or 'upstream'"));
  ConfigError misplaced = loadError(withRules("    - {id: b, key: ip, rate: 1r/s, cooldown: 1s}\n"));
  CHECK_THAT(misplaced.message, Catch::Contains("only a circuit_breaker rule takes 'cooldown'"));
}

TEST_CASE("limits: jwt claims as key sources, jwt section validated", "[config][limits]") {
  std::string y = std::string("jwt:\n  token: cookie:session\n  hs256_secret: s3cret\n  leeway: 5s\n") + kHead +
                  "    - {id: m, key: \"member=jwt:sub\", rate: 1r/s}\n";
  ConfigPtr c = loadOk(y);
  CHECK(c->jwt.token_source == "cookie:session");
  CHECK(c->jwt.hs256_secret == "s3cret");
  CHECK(c->jwt.leeway == 5 * kSeconds);
  CHECK(ruleNamed(*c, "m").key[0].source == "jwt:sub");
  ConfigError bad = loadError(std::string("jwt:\n  token: body:x\n") + kHead + "    - {id: m, key: ip, rate: 1r/s}\n");
  CHECK(bad.format() == "test.yaml:2:10: jwt.token: expected header:NAME (a Bearer token) or cookie:NAME, got 'body:x'");
  ConfigError nokey = loadError(std::string("jwt:\n  rs256_public_key_file: /nonexistent/key.pem\n") + kHead +
                                "    - {id: m, key: ip, rate: 1r/s}\n");
  CHECK_THAT(nokey.format(), Catch::StartsWith("test.yaml:2:26: jwt.rs256_public_key_file: cannot read '/nonexistent/key.pem'"));
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

TEST_CASE("limits: pool max_active, adaptive concurrency, saturation and route priority", "[config][limits]") {
  ConfigPtr c = loadOk(R"(listeners: [{address: 127.0.0.1:8080}]
upstreams:
  app:
    servers: [{address: 127.0.0.1:9080}]
    max_active: 300
    adaptive_concurrency: {floor: 20, ceiling: 400, sample_window: 250ms, percentile: 90}
    saturation: {header: X-Busy-Threads, capacity: 200, shed_low: 0.7, hold: 1s}
routes:
  - name: recs
    upstream: app
    priority: low
)");
  const auto& u = c->upstreams[0];
  CHECK(u.max_active == 300);
  CHECK(u.adaptive.enabled);
  CHECK(u.adaptive.floor == 20);
  CHECK(u.adaptive.ceiling == 400);
  CHECK(u.adaptive.sample_window == 250 * kMillis);
  CHECK(u.adaptive.percentile == Approx(0.9));
  CHECK(u.saturation.header == "X-Busy-Threads");
  CHECK(u.saturation.capacity == 200);
  CHECK(u.saturation.shed_low == Approx(0.7));
  CHECK(u.saturation.shed_normal == Approx(0.95));
  CHECK(u.saturation.hold == kSeconds);
  CHECK(c->routes[0].priority == RoutePriority::kLow);

  auto bad = [](const std::string& upstream_extra, const std::string& route_extra = "") {
    return loadError("listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  app:\n"
                     "    servers: [{address: 127.0.0.1:9080}]\n" + upstream_extra +
                     "routes:\n  - name: r\n    upstream: app\n" + route_extra);
  };
  CHECK(bad("    saturation: {capacity: 10}\n").format() ==
        "test.yaml:5:17: upstreams.app.saturation: missing required key 'header'");
  CHECK_THAT(bad("    saturation: {header: X, capacity: 10, shed_low: 0.99}\n").message,
             Catch::Contains("shed_low must not exceed shed_normal"));
  CHECK_THAT(bad("    adaptive_concurrency: {floor: 50, ceiling: 10}\n").message,
             Catch::StartsWith("upstreams.app.adaptive_concurrency: "));
  CHECK_THAT(bad("", "    priority: urgent\n").message, Catch::Contains("expected one of low, normal, high, critical"));
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

TEST_CASE("cache: route and process sections, degrade_from_cache", "[config][cache]") {
  ConfigPtr c = loadOk(R"(listeners: [{address: 127.0.0.1:8080}]
cache: {memory: 8m, shards: 8, status_header: X-Edge-Cache}
upstreams:
  app:
    servers: [{address: 127.0.0.1:9080}]
limits:
  rules:
    - {id: storm, key: global, rate: 100r/s, action: degrade, degrade_from_cache: 30s}
routes:
  - name: items
    upstream: app
    limits: [storm]
    cache:
      ttl: 1s
      max_stale: 30s
      lock_timeout: 2s
      statuses: [200, 404]
      max_entry_size: 256k
      hot_only: true
      key: {query: [sku], cookies: [member]}
      vary: [Accept-Encoding]
)");
  CHECK(c->cache.memory == 8 * 1024 * 1024);
  CHECK(c->cache.shards == 8);
  CHECK(c->cache.status_header == "X-Edge-Cache");
  REQUIRE(c->routes[0].cache);
  const auto& rc = *c->routes[0].cache;
  CHECK(rc.policy.ttl == kSeconds);
  CHECK(rc.policy.max_stale == 30 * kSeconds);
  CHECK(rc.lock_timeout == 2 * kSeconds);
  CHECK(rc.policy.statusCacheable(404));
  CHECK_FALSE(rc.policy.statusCacheable(301));
  CHECK(rc.policy.max_entry_bytes == 256 * 1024);
  CHECK(rc.hot_only);
  CHECK_FALSE(rc.key.all_query_args);
  CHECK(rc.key.query_args == std::vector<std::string>{"sku"});
  CHECK(rc.key.cookies == std::vector<std::string>{"member"});
  CHECK(rc.key.vary == std::vector<std::string>{"accept-encoding"});
  CHECK(ruleNamed(*c, "storm").degrade_from_cache == 30 * kSeconds);

  auto route = [](const std::string& cache) {
    return loadError("listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  app:\n"
                     "    servers: [{address: 127.0.0.1:9080}]\nroutes:\n  - name: r\n    upstream: app\n"
                     "    cache: " + cache + "\n");
  };
  CHECK(route("{max_stale: 1s}").format() == "test.yaml:8:12: routes[0].cache: missing required key 'ttl'");
  CHECK_THAT(route("{ttl: 1s, allow_set_cookie: true}").message,
             Catch::Contains("allow_set_cookie needs key.cookies"));
  CHECK_THAT(route("{ttl: 1s, key: {path: true}}").message, Catch::Contains("unknown key 'path'"));
  CHECK_THAT(loadError(std::string("cache: {shards: 12}\n") + kHead + "    - {id: m, key: ip, rate: 1r/s}\n").message,
             Catch::Contains("cache.shards: must be a power of two"));
  CHECK_THAT(loadError(withRules("    - {id: m, key: ip, rate: 1r/s, degrade_from_cache: 10s}\n")).message,
             Catch::Contains("only a rule with action 'degrade' answers from the cache"));
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

TEST_CASE("degrade switches and pid_file", "[config][operations]") {
  const std::string head = "listeners: [{address: 127.0.0.1:8080}]\nupstreams:\n  app:\n"
                           "    servers: [{address: 127.0.0.1:9080}]\nroutes:\n  - {name: recs, upstream: app}\n"
                           "  - {name: all, upstream: app}\n";
  ConfigPtr c = loadOk(head + "pid_file: /run/sluice.pid\ndegrade_switches:\n"
                              "  - {name: recommendations, routes: [recs], status: 503, body: off, from_cache: false}\n");
  CHECK(c->pid_file == "/run/sluice.pid");
  REQUIRE(c->degrade_switches.size() == 1);
  const auto& sw = c->degrade_switches[0];
  CHECK(sw.name == "recommendations");
  CHECK(sw.status == 503);
  CHECK(sw.body == "off");
  CHECK_FALSE(sw.from_cache);
  CHECK(c->routes[0].degrade_switches == std::vector<int>{0});
  CHECK(c->routes[1].degrade_switches.empty());
  CHECK(loadError(head + "degrade_switches:\n  - {name: x, routes: [rec]}\n").format() ==
        "test.yaml:9:24: degrade_switches[0].routes[0]: unknown route 'rec' (did you mean 'recs'?)");
  CHECK_THAT(loadError(head + "degrade_switches:\n  - {name: x, routes: [recs]}\n  - {name: x, routes: [all]}\n").message,
             Catch::Contains("duplicate switch name 'x'"));
  CHECK_THAT(loadError(head + "degrade_switches:\n  - {routes: [recs]}\n").message,
             Catch::Contains("missing required key 'name'"));
}

}  // namespace
}  // namespace sluice
