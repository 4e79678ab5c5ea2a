#include "risk/risk_config.h"

#include <atomic>

#include <algorithm>
#include <cctype>
#include <set>

namespace sluice::risk {
namespace {

bool routeClassByName(std::string_view s, RouteClass* out) {
  for (RouteClass c : {RouteClass::kOther, RouteClass::kPageView, RouteClass::kItemDetail,
                       RouteClass::kApi, RouteClass::kCheckout}) {
    if (s == routeClassName(c)) {
      *out = c;
      return true;
    }
  }
  return false;
}

}  // namespace

RiskConfig RiskConfig::defaults() {
  RiskConfig c;
  RiskProfileConfig p;
  p.name = "default";
  p.thresholds = {{30, "pow"}, {50, "slider"}, {70, "sms"}, {90, "block"}};
  c.profiles.push_back(p);
  return c;
}

const ChallengeLadder& RiskPolicy::ladderFor(std::string_view profile) const {
  for (const auto& l : ladders)
    if (l.profile() == profile) return l;
  return ladders.front();
}

std::string_view RiskPolicy::levelName(uint8_t level) const {
  return level == 0 || level > levelNames.size() ? std::string_view() : levelNames[level - 1];
}

uint8_t RiskPolicy::levelByName(std::string_view name) const {
  for (size_t i = 0; i < levelNames.size(); ++i)
    if (levelNames[i] == name) return static_cast<uint8_t>(i + 1);
  return 0;
}

RiskPolicyPtr buildRiskPolicy(const RiskConfig& cfg, const RiskSecrets& secrets,
                              std::vector<std::string>* errors) {
  const size_t errorsBefore = errors->size();
  auto err = [&](std::string m) { errors->push_back(std::move(m)); };
  auto p = std::make_shared<RiskPolicy>();
  static std::atomic<uint32_t> nextInstance{1};
  p->instanceId = nextInstance.fetch_add(1, std::memory_order_relaxed);
  if (p->instanceId == 0) p->instanceId = nextInstance.fetch_add(1, std::memory_order_relaxed);
  p->config = cfg;

  // Levels.
  if (cfg.levels.empty()) err("risk.levels: at least one challenge level is needed");
  if (cfg.levels.size() > 16) err("risk.levels: at most 16 levels");
  std::set<std::string> seen;
  for (const auto& l : cfg.levels) {
    if (l.empty() || l == "allow" || l == "block")
      err("risk.levels: '" + l + "' is not a usable level name");
    else if (!seen.insert(l).second)
      err("risk.levels: '" + l + "' appears twice");
    p->levelNames.push_back(l);
    p->levelDifficulty.push_back(0);
  }
  for (const auto& [name, bits] : cfg.powDifficulty) {
    const uint8_t lvl = p->levelByName(name);
    if (lvl == 0) err("risk.pow_difficulty: unknown level '" + name + "'");
    else if (bits < 1 || bits > 32) err("risk.pow_difficulty." + name + ": must be 1..32 bits");
    else p->levelDifficulty[lvl - 1] = static_cast<uint8_t>(bits);
  }

  // Signal weights and rules.
  std::array<int, kSignalCount> weights{};
  for (int i = 0; i < kSignalCount; ++i) weights[i] = signalInfo(static_cast<Signal>(i)).defaultPoints;
  for (const auto& [name, pts] : cfg.signalWeights) {
    Signal s;
    if (!signalByName(name, &s)) err("risk.signals: unknown signal '" + name + "'");
    else if (pts < -100 || pts > 100) err("risk.signals." + name + ": points must be -100..100");
    else weights[static_cast<int>(s)] = pts;
  }
  std::vector<CompiledRule> rules;
  for (size_t i = 0; i < cfg.rules.size(); ++i) {
    const auto& r = cfg.rules[i];
    const std::string at = "risk.rules[" + std::to_string(i) + "]";
    CompiledRule c;
    c.name = r.name.empty() ? "rule" + std::to_string(i) : r.name;
    c.points = r.points;
    if (r.when.empty()) err(at + ": 'when' needs at least one signal");
    if (r.points < -100 || r.points > 100) err(at + ": points must be -100..100");
    for (const auto& w : r.when) {
      Signal s;
      if (!signalByName(w, &s)) err(at + ": unknown signal '" + w + "'");
      else c.mask |= uint64_t{1} << static_cast<int>(s);
    }
    for (const auto& rc : r.routes) {
      RouteClass route;
      if (!routeClassByName(rc, &route)) err(at + ": unknown route class '" + rc + "'");
      else c.routes |= static_cast<uint8_t>(1u << static_cast<int>(route));
    }
    rules.push_back(std::move(c));
  }
  if (cfg.rules.size() > 32) err("risk.rules: at most 32 rules");
  if (cfg.topSignals < 1 || cfg.topSignals > kMaxTopSignals)
    err("risk.score.top_signals: must be 1.." + std::to_string(kMaxTopSignals));
  p->scorer = RiskScorer(weights, std::move(rules), cfg.topSignals);

  if (cfg.scoreHalfLife <= 0) err("risk.score.half_life: must be positive");
  if (cfg.ipCarryPercent < 0 || cfg.ipCarryPercent > 100) err("risk.score.ip_carry_percent: must be 0..100");
  const auto& b = cfg.behaviour;
  if (b.params.rateWindow < kSeconds) err("risk.behaviour.rate_window: at least 1s");
  if (b.params.regularMinSamples < 2 || b.params.regularMinSamples > 8)
    err("risk.behaviour.regular_min_samples: must be 2..8");
  if (b.regularMaxCv < 0) err("risk.behaviour.regular_max_cv: must be >= 0");
  if (b.memoryPerKind < 4096) err("risk.behaviour.memory: at least 4k");
  if (b.params.idleAfter < b.params.rateWindow) err("risk.behaviour.idle_after: must be >= rate_window");

  // Countries and ASNs.
  for (const auto& c : cfg.riskyCountries) {
    if (c.size() != 2 || !std::isupper(static_cast<unsigned char>(c[0])) ||
        !std::isupper(static_cast<unsigned char>(c[1])))
      err("risk.risky_countries: '" + c + "' is not an ISO 3166 alpha-2 code (e.g. \"GB\")");
    else p->riskyCountries.push_back(static_cast<uint16_t>(c[0] << 8 | c[1]));
  }
  p->riskyAsns = cfg.riskyAsns;
  std::sort(p->riskyAsns.begin(), p->riskyAsns.end());

  // Profiles and their ladders.
  bool haveDefault = false;
  std::set<std::string> profileNames;
  for (size_t i = 0; i < cfg.profiles.size(); ++i) {
    const auto& pr = cfg.profiles[i];
    const std::string at = "risk.profiles[" + std::to_string(i) + "]";
    if (pr.name.empty()) err(at + ": needs a name");
    if (!profileNames.insert(pr.name).second) err(at + ": profile '" + pr.name + "' defined twice");
    std::vector<LadderStep> steps;
    int last = -1;
    for (size_t j = 0; j < pr.thresholds.size(); ++j) {
      const auto& t = pr.thresholds[j];
      const std::string tat = at + ".thresholds[" + std::to_string(j) + "]";
      if (t.score < 0 || t.score > 100) err(tat + ": score must be 0..100");
      if (t.score <= last) err(tat + ": scores must increase");
      last = t.score;
      LadderStep s;
      s.minScore = t.score;
      if (t.action == "allow") {
        s.action = RiskAction::kAllow;
      } else if (t.action == "block") {
        s.action = RiskAction::kBlock;
      } else if (uint8_t lvl = p->levelByName(t.action); lvl != 0) {
        s.action = RiskAction::kChallenge;
        s.level = lvl;
      } else {
        err(tat + ": unknown action '" + t.action + "' (allow, block or a level)");
      }
      steps.push_back(s);
    }
    if (pr.maxAttempts < 1 || pr.maxAttempts > 50) err(at + ".max_attempts: must be 1..50");
    RiskAction fbAction = RiskAction::kBlock;
    uint8_t fbLevel = 0;
    if (pr.fallback != "block") {
      fbLevel = p->levelByName(pr.fallback);
      fbAction = RiskAction::kChallenge;
      if (fbLevel == 0) err(at + ".fallback: '" + pr.fallback + "' is neither block nor a level");
    }
    if (pr.unansweredAfter <= 0) err(at + ".unanswered_after: must be positive");
    ChallengeLadder ladder(pr.name, std::move(steps), static_cast<uint8_t>(p->levelNames.size()),
                           pr.monitor, static_cast<uint8_t>(std::clamp(pr.maxAttempts, 1, 50)),
                           fbAction, fbLevel, pr.unansweredAfter);
    if (pr.name == "default") {
      haveDefault = true;
      p->ladders.insert(p->ladders.begin(), std::move(ladder));
    } else {
      p->ladders.push_back(std::move(ladder));
    }
  }
  if (!haveDefault) err("risk.profiles: a profile named 'default' is required");

  // Keys.
  std::string e;
  PassTokenKeysConfig kc;
  kc.masterSecret = secrets.masterSecret;
  if (cfg.tokens.keyId < 1 || cfg.tokens.keyId > 255) err("risk.tokens.key_id: must be 1..255");
  kc.currentKeyId = static_cast<uint8_t>(std::clamp(cfg.tokens.keyId, 1, 255));
  for (int id : cfg.tokens.acceptedKeyIds) {
    if (id < 1 || id > 255) err("risk.tokens.accepted_key_ids: " + std::to_string(id) + " is not 1..255");
    else kc.acceptedKeyIds.push_back(static_cast<uint8_t>(id));
  }
  kc.minPolicyVersion = cfg.tokens.minPolicyVersion;
  kc.maxClockSkewSeconds = cfg.tokens.maxClockSkew / kSeconds;
  if (cfg.tokens.ttl < kSeconds) err("risk.tokens.ttl: at least 1s");
  if (cfg.tokens.cookie.empty()) err("risk.tokens.cookie: needs a name");
  if (cfg.tokens.policyVersion < cfg.tokens.minPolicyVersion)
    err("risk.tokens.policy_version: below min_policy_version, every new token would be refused");
  if (secrets.masterSecret.size() < 32) {
    err("risk: the master secret is missing or shorter than 32 bytes");
  } else {
    p->tokens = PassTokenCodec::create(kc, &e);
    if (!p->tokens) err("risk.tokens: " + e);
    p->tickets = ChallengeTicketCodec::create(secrets.masterSecret, &e);
    if (!p->tickets) err("risk.challenge: " + e);
  }
  if (!secrets.verifierSecret.empty()) {
    if (secrets.verifierSecret.size() < 32) err("risk: the verifier secret is shorter than 32 bytes");
    else p->verifierKey = std::make_shared<const HmacSha256>(secrets.verifierSecret);
  }

  // Files last: no point opening databases for a config that is already wrong.
  if (errors->size() != errorsBefore) return nullptr;
  for (const auto& path : {cfg.geoip.country, cfg.geoip.asn, cfg.geoip.anonymous}) {
    if (path.empty()) continue;
    auto db = GeoIpDatabase::open(path, &e);
    if (!db) err("risk.geoip: " + e);
    else p->geoip.push_back(std::move(db));
  }
  for (const auto& l : cfg.lists) {
    if (l.name.empty()) err("risk.lists: every list needs a name");
    if (l.points < 0 || l.points > 100) err("risk.lists." + l.name + ": points must be 0..100");
  }
  if (errors->size() != errorsBefore) return nullptr;
  p->lists = ScalperLists::load(cfg.lists, &e);
  if (!p->lists) err("risk.lists: " + e);
  if (errors->size() != errorsBefore) return nullptr;
  return p;
}

}  // namespace sluice::risk
