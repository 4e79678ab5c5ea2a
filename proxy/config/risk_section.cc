// The `risk:` section (docs/configuration.md, "risk"): YAML onto risk::RiskConfig one to one
// (risk/risk_config.h documents the shape), the proxy-side keys onto RiskSettings, the secrets
// from files or the environment, then buildRiskPolicy. Its errors ("risk.profiles[1]...") are
// mapped back to the YAML node they came from, so every problem is reported as file:line:col.
#include <cstdlib>

#include "proxy/config/loader.h"
#include "proxy/config/risk_settings.h"
#include "risk/risk_request.h"

namespace sluice::config_detail {

namespace {

// Marks of the YAML nodes behind the builder's error paths, longest prefix wins.
struct MarkIndex {
  std::vector<std::pair<std::string, YAML::Mark>> marks;
  void add(const std::string& path, const Node& n) { marks.emplace_back(path, n.Mark()); }
  YAML::Mark find(const std::string& msg, const YAML::Mark& dflt) const {
    size_t best = 0;
    YAML::Mark out = dflt;
    for (const auto& [p, m] : marks) {
      if (p.size() > best && msg.compare(0, p.size(), p) == 0 &&
          (msg.size() == p.size() || msg[p.size()] == ':' || msg[p.size()] == '.' ||
           msg[p.size()] == '[' || msg[p.size()] == ' ')) {
        best = p.size();
        out = m;
      }
    }
    return out;
  }
};

}  // namespace

bool Loader::readSecret(const Mapping& m, const std::string& what, std::string* out,
                        std::string* source) {
  auto file = m.get(what + "_file");
  auto env = m.get(what + "_env");
  if (file && env) {
    fail(*env, m.child(what + "_env") + ": give either " + what + "_file or " + what +
                   "_env, not both");
    return false;
  }
  if (file) {
    std::string path;
    if (!readString(*file, m.child(what + "_file"), &path)) return false;
    std::string text;
    if (!readFile(*file, m.child(what + "_file"), path, &text)) return false;
    *out = trimAll(text);
    *source = "file " + path;
    if (out->size() < 32) {
      fail(*file, m.child(what + "_file") + ": the secret in '" + path +
                      "' is shorter than 32 bytes (make one with: openssl rand -hex 32)");
      return false;
    }
    return true;
  }
  if (env) {
    std::string name;
    if (!readString(*env, m.child(what + "_env"), &name)) return false;
    const char* v = getenv(name.c_str());
    if (!v || !*v) {
      fail(*env, m.child(what + "_env") + ": environment variable " + name + " is not set");
      return false;
    }
    *out = trimAll(v);
    *source = "env " + name;
    if (out->size() < 32) {
      fail(*env, m.child(what + "_env") + ": the secret in " + name +
                     " is shorter than 32 bytes (make one with: openssl rand -hex 32)");
      return false;
    }
    return true;
  }
  return false;
}

void Loader::loadRisk(const Node& n, Config& cfg) {
  Mapping m = mapping(
      n, "risk",
      {"enabled", "master_secret_file", "master_secret_env", "verifier_secret_file",
       "verifier_secret_env", "geoip", "signals", "risky_countries", "risky_asns", "lists",
       "rules", "behaviour", "score", "levels", "pow_difficulty", "challenge", "tokens",
       "profiles", "identity", "endpoint_prefix"});
  if (!m.valid) return;
  bool enabled = true;
  if (auto v = m.get("enabled")) readBool(*v, m.child("enabled"), &enabled);
  if (!enabled) return;

  const size_t errors_before = errors_.size();
  auto settings = std::make_shared<RiskSettings>();
  risk::RiskConfig rc = risk::RiskConfig::defaults();
  MarkIndex marks;
  marks.add("risk", n);

  // Secrets: required when risk is on; never logged, redacted in GET /config.
  risk::RiskSecrets secrets;
  std::string verifier_source;
  if (!readSecret(m, "master_secret", &secrets.masterSecret, &settings->secret_source) &&
      !m.get("master_secret_file") && !m.get("master_secret_env")) {
    fail(n, "risk: a master secret is required when risk is enabled: set master_secret_file "
            "(a file with >= 32 random bytes, e.g. `openssl rand -hex 32`) or master_secret_env");
  }
  readSecret(m, "verifier_secret", &secrets.verifierSecret, &verifier_source);

  if (auto g = m.get("geoip")) {
    Mapping gm = mapping(*g, "risk.geoip", {"country", "asn", "anonymous"});
    marks.add("risk.geoip", *g);
    if (auto v = gm.get("country")) readString(*v, gm.child("country"), &rc.geoip.country);
    if (auto v = gm.get("asn")) readString(*v, gm.child("asn"), &rc.geoip.asn);
    if (auto v = gm.get("anonymous")) readString(*v, gm.child("anonymous"), &rc.geoip.anonymous);
  }
  if (auto s = m.get("signals")) {
    marks.add("risk.signals", *s);
    if (!s->IsMap()) {
      fail(*s, "risk.signals: expected a mapping of signal name to points, got " + describe(*s));
    } else {
      for (auto it = s->begin(); it != s->end(); ++it) {
        Node k = it->first, v = it->second;
        if (!k.IsScalar()) continue;
        int pts = 0;
        marks.add("risk.signals." + k.Scalar(), k);
        if (readInt(v, "risk.signals." + k.Scalar(), -100, 100, &pts))
          rc.signalWeights.emplace_back(k.Scalar(), pts);
      }
    }
  }
  if (auto v = m.get("risky_countries")) {
    marks.add("risk.risky_countries", *v);
    std::vector<Node> items;
    if (sequence(*v, "risk.risky_countries", &items)) {
      rc.riskyCountries.clear();
      for (size_t i = 0; i < items.size(); i++) {
        std::string c;
        if (readString(items[i], "risk.risky_countries[" + std::to_string(i) + "]", &c))
          rc.riskyCountries.push_back(c);
      }
    }
  }
  if (auto v = m.get("risky_asns")) {
    std::vector<Node> items;
    if (sequence(*v, "risk.risky_asns", &items)) {
      for (size_t i = 0; i < items.size(); i++) {
        uint32_t asn = 0;
        if (readInt(items[i], "risk.risky_asns[" + std::to_string(i) + "]", 1, 4294967295LL, &asn))
          rc.riskyAsns.push_back(asn);
      }
    }
  }
  if (auto v = m.get("lists")) {
    marks.add("risk.lists", *v);
    std::vector<Node> items;
    if (sequence(*v, "risk.lists", &items)) {
      for (size_t i = 0; i < items.size(); i++) {
        std::string p = "risk.lists[" + std::to_string(i) + "]";
        Mapping lm = mapping(items[i], p, {"name", "kind", "file", "points", "allow"});
        if (!lm.valid) continue;
        risk::ListSource ls;
        if (auto x = lm.get("name")) {
          if (readString(*x, lm.child("name"), &ls.name)) marks.add("risk.lists." + ls.name, items[i]);
        } else {
          fail(items[i], p + ": missing required key 'name'");
        }
        if (auto x = lm.get("kind")) {
          std::string k;
          if (readEnum(*x, lm.child("kind"),
                       {"ip", "member", "device", "address", "fingerprint", "tls"}, &k))
            risk::parseListKind(k, &ls.kind);
        } else {
          fail(items[i], p + ": missing required key 'kind'");
        }
        if (auto x = lm.get("file")) {
          if (readString(*x, lm.child("file"), &ls.file)) {
            // The loader reports "file:line:col" of the list itself; point at the entry too.
            marks.add("risk.lists: " + ls.file, *x);
          }
        } else {
          fail(items[i], p + ": missing required key 'file'");
        }
        if (auto x = lm.get("points")) readInt(*x, lm.child("points"), 0, 100, &ls.points);
        if (auto x = lm.get("allow")) readBool(*x, lm.child("allow"), &ls.allow);
        rc.lists.push_back(std::move(ls));
      }
    }
  }
  if (auto v = m.get("rules")) {
    std::vector<Node> items;
    if (sequence(*v, "risk.rules", &items)) {
      for (size_t i = 0; i < items.size(); i++) {
        std::string p = "risk.rules[" + std::to_string(i) + "]";
        marks.add(p, items[i]);
        Mapping rm = mapping(items[i], p, {"name", "when", "routes", "points"});
        if (!rm.valid) continue;
        risk::RiskRuleConfig r;
        if (auto x = rm.get("name")) readString(*x, rm.child("name"), &r.name);
        if (auto x = rm.get("when")) readNameList(*x, rm.child("when"), &r.when);
        if (auto x = rm.get("routes")) readNameList(*x, rm.child("routes"), &r.routes);
        if (auto x = rm.get("points")) readInt(*x, rm.child("points"), -100, 100, &r.points);
        rc.rules.push_back(std::move(r));
      }
    }
  }
  if (auto v = m.get("behaviour")) {
    marks.add("risk.behaviour", *v);
    Mapping bm = mapping(*v, "risk.behaviour",
                         {"memory", "rate_window", "rate_max", "ip_rate_max", "regular_max_cv",
                          "regular_min_samples", "item_view_window", "page_view_window",
                          "distinct_window", "idle_after", "max_members_per_device",
                          "max_members_per_ip", "max_devices_per_member",
                          "max_addresses_per_member", "challenge_failures"});
    auto& b = rc.behaviour;
    uint64_t mem = 0;
    if (auto x = bm.get("memory"); x && readSize(*x, bm.child("memory"), &mem, 4096))
      b.memoryPerKind = mem;
    if (auto x = bm.get("rate_window")) readDuration(*x, bm.child("rate_window"), &b.params.rateWindow);
    if (auto x = bm.get("rate_max")) readInt(*x, bm.child("rate_max"), 1, 1000000, &b.rateMax);
    if (auto x = bm.get("ip_rate_max")) readInt(*x, bm.child("ip_rate_max"), 1, 10000000, &b.ipRateMax);
    if (auto x = bm.get("regular_max_cv")) readNumber(*x, bm.child("regular_max_cv"), 0, 10, &b.regularMaxCv);
    if (auto x = bm.get("regular_min_samples"))
      readInt(*x, bm.child("regular_min_samples"), 2, 8, &b.params.regularMinSamples);
    if (auto x = bm.get("item_view_window")) readDuration(*x, bm.child("item_view_window"), &b.params.itemViewWindow);
    if (auto x = bm.get("page_view_window")) readDuration(*x, bm.child("page_view_window"), &b.params.pageViewWindow);
    if (auto x = bm.get("distinct_window")) readDuration(*x, bm.child("distinct_window"), &b.params.distinctWindow);
    if (auto x = bm.get("idle_after")) readDuration(*x, bm.child("idle_after"), &b.params.idleAfter);
    if (auto x = bm.get("max_members_per_device")) readInt(*x, bm.child("max_members_per_device"), 1, 64, &b.maxMembersPerDevice);
    if (auto x = bm.get("max_members_per_ip")) readInt(*x, bm.child("max_members_per_ip"), 1, 100000, &b.maxMembersPerIp);
    if (auto x = bm.get("max_devices_per_member")) readInt(*x, bm.child("max_devices_per_member"), 1, 64, &b.maxDevicesPerMember);
    if (auto x = bm.get("max_addresses_per_member")) readInt(*x, bm.child("max_addresses_per_member"), 1, 64, &b.maxAddressesPerMember);
    if (auto x = bm.get("challenge_failures")) readInt(*x, bm.child("challenge_failures"), 0, 255, &b.challengeFailures);
  }
  if (auto v = m.get("score")) {
    marks.add("risk.score", *v);
    Mapping sm = mapping(*v, "risk.score", {"half_life", "ip_carry_percent", "top_signals"});
    if (auto x = sm.get("half_life")) readDuration(*x, sm.child("half_life"), &rc.scoreHalfLife);
    if (auto x = sm.get("ip_carry_percent")) readInt(*x, sm.child("ip_carry_percent"), 0, 100, &rc.ipCarryPercent);
    if (auto x = sm.get("top_signals")) readInt(*x, sm.child("top_signals"), 1, risk::kMaxTopSignals, &rc.topSignals);
  }
  if (auto v = m.get("levels")) {
    marks.add("risk.levels", *v);
    std::vector<std::string> levels;
    if (readNameList(*v, "risk.levels", &levels)) rc.levels = levels;
  }
  if (auto v = m.get("pow_difficulty")) {
    marks.add("risk.pow_difficulty", *v);
    if (!v->IsMap()) {
      fail(*v, "risk.pow_difficulty: expected a mapping like {pow: 16}, got " + describe(*v));
    } else {
      rc.powDifficulty.clear();
      for (auto it = v->begin(); it != v->end(); ++it) {
        Node k = it->first, x = it->second;
        if (!k.IsScalar()) continue;
        int bits = 0;
        if (readInt(x, "risk.pow_difficulty." + k.Scalar(), 1, 32, &bits))
          rc.powDifficulty[k.Scalar()] = bits;
      }
    }
  }
  if (auto v = m.get("challenge")) {
    marks.add("risk.challenge", *v);
    Mapping cm = mapping(*v, "risk.challenge",
                         {"ticket_ttl", "verifier_max_skew", "spent_memory", "status", "url"});
    if (auto x = cm.get("ticket_ttl")) readDuration(*x, cm.child("ticket_ttl"), &rc.challenge.ticketTtl);
    if (auto x = cm.get("verifier_max_skew")) readDuration(*x, cm.child("verifier_max_skew"), &rc.challenge.verifierMaxSkew);
    uint64_t mem = 0;
    if (auto x = cm.get("spent_memory"); x && readSize(*x, cm.child("spent_memory"), &mem, 4096))
      rc.challenge.spentMemory = mem;
    if (auto x = cm.get("status")) {
      std::string s;
      if (readEnum(*x, cm.child("status"), {"403", "429"}, &s)) settings->challenge_status = std::stoi(s);
    }
    if (auto x = cm.get("url")) {
      if (readString(*x, cm.child("url"), &settings->challenge_url) &&
          settings->challenge_url.find_first_of("\r\n") != std::string::npos)
        fail(*x, cm.child("url") + ": must not contain line breaks");
    }
  }
  if (auto v = m.get("tokens")) {
    marks.add("risk.tokens", *v);
    Mapping tm = mapping(*v, "risk.tokens",
                         {"cookie", "ttl", "key_id", "accepted_key_ids", "policy_version",
                          "min_policy_version", "max_clock_skew"});
    auto& t = rc.tokens;
    if (auto x = tm.get("cookie")) {
      if (readString(*x, tm.child("cookie"), &t.cookie) && !isToken(t.cookie))
        fail(*x, tm.child("cookie") + ": '" + t.cookie + "' is not a valid cookie name");
    }
    if (auto x = tm.get("ttl")) readDuration(*x, tm.child("ttl"), &t.ttl);
    if (auto x = tm.get("key_id")) readInt(*x, tm.child("key_id"), 1, 255, &t.keyId);
    if (auto x = tm.get("accepted_key_ids")) {
      std::vector<Node> items;
      if (sequence(*x, tm.child("accepted_key_ids"), &items)) {
        for (size_t i = 0; i < items.size(); i++) {
          int id = 0;
          if (readInt(items[i], tm.child("accepted_key_ids") + "[" + std::to_string(i) + "]", 1, 255, &id))
            t.acceptedKeyIds.push_back(id);
        }
      }
    }
    if (auto x = tm.get("policy_version")) readInt(*x, tm.child("policy_version"), 0, 4294967295LL, &t.policyVersion);
    if (auto x = tm.get("min_policy_version")) readInt(*x, tm.child("min_policy_version"), 0, 4294967295LL, &t.minPolicyVersion);
    if (auto x = tm.get("max_clock_skew")) readDuration(*x, tm.child("max_clock_skew"), &t.maxClockSkew, true);
  }
  if (auto v = m.get("profiles")) {
    marks.add("risk.profiles", *v);
    std::vector<Node> items;
    if (sequence(*v, "risk.profiles", &items)) {
      rc.profiles.clear();
      bool have_default = false;
      for (size_t i = 0; i < items.size(); i++) {
        std::string p = "risk.profiles[" + std::to_string(i) + "]";
        marks.add(p, items[i]);
        Mapping pm = mapping(items[i], p,
                             {"name", "monitor", "thresholds", "max_attempts", "fallback",
                              "unanswered_after"});
        if (!pm.valid) continue;
        risk::RiskProfileConfig pr;
        if (auto x = pm.get("name")) readString(*x, pm.child("name"), &pr.name);
        else fail(items[i], p + ": missing required key 'name'");
        if (pr.name == "default") have_default = true;
        if (auto x = pm.get("monitor")) readBool(*x, pm.child("monitor"), &pr.monitor);
        if (auto x = pm.get("max_attempts")) readInt(*x, pm.child("max_attempts"), 1, 50, &pr.maxAttempts);
        if (auto x = pm.get("fallback")) readString(*x, pm.child("fallback"), &pr.fallback);
        if (auto x = pm.get("unanswered_after")) readDuration(*x, pm.child("unanswered_after"), &pr.unansweredAfter);
        if (auto x = pm.get("thresholds")) {
          std::vector<Node> ts;
          if (sequence(*x, pm.child("thresholds"), &ts)) {
            for (size_t j = 0; j < ts.size(); j++) {
              std::string tp = pm.child("thresholds") + "[" + std::to_string(j) + "]";
              marks.add(tp, ts[j]);
              Mapping thm = mapping(ts[j], tp, {"score", "action"});
              risk::LadderThresholdConfig t;
              if (auto y = thm.get("score")) readInt(*y, thm.child("score"), 0, 100, &t.score);
              else if (thm.valid) fail(ts[j], tp + ": missing required key 'score'");
              if (auto y = thm.get("action")) readString(*y, thm.child("action"), &t.action);
              else if (thm.valid) fail(ts[j], tp + ": missing required key 'action'");
              pr.thresholds.push_back(t);
            }
          }
        }
        risk_profiles_.push_back(pr.name);
        rc.profiles.push_back(std::move(pr));
      }
      if (!have_default) {
        // Routes without a profile use "default": keep the built-in one.
        risk::RiskConfig d = risk::RiskConfig::defaults();
        rc.profiles.insert(rc.profiles.begin(), d.profiles.front());
        risk_profiles_.push_back("default");
      }
    }
  } else {
    risk_profiles_.push_back("default");
  }
  if (auto v = m.get("identity")) {
    Mapping im = mapping(*v, "risk.identity",
                         {"member_cookie", "device_cookie", "device_header", "address_header",
                          "tls_fingerprint_header"});
    auto header = [&](const char* key, std::string* out) {
      auto x = im.get(key);
      if (!x) return;
      std::string s;
      if (!scalar(*x, im.child(key), "a header name", &s)) return;
      if (!s.empty() && !isToken(s)) fail(*x, im.child(key) + ": '" + s + "' is not a valid name");
      else *out = s;
    };
    header("member_cookie", &settings->member_cookie);
    header("device_cookie", &settings->device_cookie);
    header("device_header", &settings->device_header);
    header("address_header", &settings->address_header);
    header("tls_fingerprint_header", &settings->tls_fingerprint_header);
  }
  if (auto v = m.get("endpoint_prefix")) {
    std::string s;
    if (readString(*v, "risk.endpoint_prefix", &s)) {
      if (s.size() < 2 || s[0] != '/' || s.back() == '/' || s.find_first_of("?# \r\n") != std::string::npos)
        fail(*v, "risk.endpoint_prefix: expected a path like /.sluice, got '" + s + "'");
      else
        settings->endpoint_prefix = s;
    }
  }
  risk_on_ = true;
  if (errors_.size() != errors_before) return;

  // The policy opens these itself; a reload must notice them replaced even if the YAML is not.
  for (const auto* f : {&rc.geoip.country, &rc.geoip.asn, &rc.geoip.anonymous})
    if (!f->empty()) noteInput(*f);
  for (const auto& l : rc.lists)
    if (!l.file.empty()) noteInput(l.file);
  std::vector<std::string> errs;
  settings->policy = risk::buildRiskPolicy(rc, secrets, &errs);
  for (const auto& e : errs) fail(marks.find(e, n.Mark()), e);
  if (!settings->policy) return;
  settings->behaviour_memory = rc.behaviour.memoryPerKind;
  settings->spent_memory = rc.challenge.spentMemory;
  cfg.risk = std::move(settings);
}

void Loader::loadRouteRisk(const Node& n, const std::string& path, RouteConfig& r) {
  if (n.IsScalar()) {
    std::string s = toLower(n.Scalar());
    if (s == "off" || s == "false") {
      r.risk_enabled = false;
      return;
    }
    fail(n, path + ": expected off or a mapping like {profile: checkout, class: checkout}, got '" +
                n.Scalar() + "'");
    return;
  }
  Mapping m = mapping(n, path, {"enabled", "profile", "class"});
  if (!m.valid) return;
  if (auto v = m.get("enabled")) readBool(*v, m.child("enabled"), &r.risk_enabled);
  if (auto v = m.get("profile")) {
    std::string p;
    if (readString(*v, m.child("profile"), &p)) {
      if (!risk_on_)
        fail(*v, m.child("profile") + ": no `risk:` section is enabled, so there is no profile '" +
                     p + "'");
      else if (std::find(risk_profiles_.begin(), risk_profiles_.end(), p) == risk_profiles_.end())
        fail(*v, m.child("profile") + ": unknown risk profile '" + p + "'" +
                     suggestion(p, risk_profiles_));
      else
        r.risk_profile = p;
    }
  }
  if (auto v = m.get("class")) {
    std::string c;
    if (readEnum(*v, m.child("class"), {"other", "page", "item_detail", "api", "checkout"}, &c)) {
      using risk::RouteClass;
      RouteClass rc = c == "other" ? RouteClass::kOther
                      : c == "page" ? RouteClass::kPageView
                      : c == "item_detail" ? RouteClass::kItemDetail
                      : c == "api" ? RouteClass::kApi
                                   : RouteClass::kCheckout;
      r.risk_class = static_cast<uint8_t>(rc);
    }
  }
}

}  // namespace sluice::config_detail
