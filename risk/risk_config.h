#pragma once
// RiskConfig: the risk section of sluice.yaml as plain structs, and the builder that validates it
// into an immutable RiskPolicy. proxy/config maps YAML onto these fields one to one (durations
// through parseDurationNanos, sizes through parseSize); the builder reports every problem as a
// string, never throws.
//
// Intended YAML shape (every key optional unless marked):
//
//   risk:
//     master_secret_file: /etc/sluice/risk.key   # required (proxy reads it into RiskSecrets)
//     verifier_secret_file: /etc/sluice/verifier.key
//     geoip: {country: /var/lib/GeoIP/GeoLite2-Country.mmdb, asn: .../GeoLite2-ASN.mmdb,
//             anonymous: .../GeoIP2-Anonymous-IP.mmdb}
//     signals: {ua.automation: 40, geo.risky_country: 0}   # weight overrides; 0 switches off
//     risky_countries: [XX]
//     risky_asns: [64500]
//     lists:
//       - {name: scalper_ips, kind: ip, file: /etc/sluice/lists/ips.txt, points: 100}
//       - {name: vip_members, kind: member, file: /etc/sluice/lists/vip.txt, allow: true}
//     rules:
//       - {name: headless_checkout, when: [ua.headless], routes: [checkout], points: 40}
//     behaviour:
//       memory: 16m            # per entity kind (ip, device, member)
//       rate_window: 60s
//       rate_max: 120          # device/member requests per window
//       ip_rate_max: 600
//       regular_max_cv: 0.1
//       regular_min_samples: 6
//       item_view_window: 10m
//       page_view_window: 30m
//       distinct_window: 1h
//       idle_after: 1h
//       max_members_per_device: 3
//       max_members_per_ip: 30
//       max_devices_per_member: 3
//       max_addresses_per_member: 3
//       challenge_failures: 2
//     score: {half_life: 10m, ip_carry_percent: 50, top_signals: 5}
//     levels: [pow, slider, sms, face]       # ladder order, easiest first
//     pow_difficulty: {pow: 16}              # levels solved in-browser by proof of work
//     challenge: {ticket_ttl: 5m, verifier_max_skew: 60s, spent_memory: 4m}
//     tokens: {cookie: sluice_pass, ttl: 30m, key_id: 2, accepted_key_ids: [1],
//              policy_version: 3, min_policy_version: 2, max_clock_skew: 60s}
//     profiles:
//       - name: default                       # required
//         monitor: false
//         thresholds: [{score: 30, action: pow}, {score: 50, action: slider},
//                      {score: 70, action: sms}, {score: 90, action: block}]
//         max_attempts: 4
//         fallback: block                     # or a level name
//         unanswered_after: 2m
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "risk/behaviour.h"
#include "risk/challenge_ladder.h"
#include "risk/challenge_ticket.h"
#include "risk/geoip.h"
#include "risk/pass_token.h"
#include "risk/risk_scorer.h"
#include "risk/scalper_lists.h"

namespace sluice::risk {

struct RiskRuleConfig {
  std::string name;
  std::vector<std::string> when;    // signal names, all must fire
  std::vector<std::string> routes;  // route class names (page, item_detail, api, checkout, other)
  int points = 0;
};

struct LadderThresholdConfig {
  int score = 0;
  std::string action;  // "allow", "block" or a level name
};

struct RiskProfileConfig {
  std::string name;
  bool monitor = false;
  std::vector<LadderThresholdConfig> thresholds;
  int maxAttempts = 4;
  std::string fallback = "block";
  Nanos unansweredAfter = 120 * kSeconds;
};

struct GeoIpConfig {
  std::string country;
  std::string asn;
  std::string anonymous;
};

struct BehaviourConfig {
  BehaviourParams params;
  size_t memoryPerKind = size_t{16} << 20;
  uint32_t rateMax = 120;
  uint32_t ipRateMax = 600;
  double regularMaxCv = 0.1;
  uint32_t maxMembersPerDevice = 3;
  uint32_t maxMembersPerIp = 30;
  uint32_t maxDevicesPerMember = 3;
  uint32_t maxAddressesPerMember = 3;
  uint32_t challengeFailures = 2;
};

struct TokenConfig {
  std::string cookie = "sluice_pass";
  Nanos ttl = 30 * 60 * kSeconds;
  int keyId = 1;
  std::vector<int> acceptedKeyIds;
  uint32_t policyVersion = 1;
  uint32_t minPolicyVersion = 0;
  Nanos maxClockSkew = 60 * kSeconds;
};

struct ChallengeConfig {
  Nanos ticketTtl = 5 * 60 * kSeconds;
  Nanos verifierMaxSkew = 60 * kSeconds;
  size_t spentMemory = size_t{4} << 20;
};

// Secrets come from files the proxy reads; never from the YAML itself.
struct RiskSecrets {
  std::string masterSecret;    // >= 32 bytes
  std::string verifierSecret;  // >= 32 bytes when any non-proof-of-work level is configured
};

struct RiskConfig {
  std::vector<std::pair<std::string, int>> signalWeights;
  std::vector<RiskRuleConfig> rules;
  std::vector<std::string> riskyCountries;
  std::vector<uint32_t> riskyAsns;
  std::vector<ListSource> lists;
  GeoIpConfig geoip;
  BehaviourConfig behaviour;
  Nanos scoreHalfLife = 10 * 60 * kSeconds;
  int ipCarryPercent = 50;
  int topSignals = 5;
  std::vector<std::string> levels = {"pow", "slider", "sms", "face"};
  std::map<std::string, int> powDifficulty = {{"pow", 16}};
  ChallengeConfig challenge;
  TokenConfig tokens;
  std::vector<RiskProfileConfig> profiles;

  // A complete default: the signal defaults, levels pow < slider < sms < face, and a "default"
  // profile 30 pow / 50 slider / 70 sms / 90 block.
  static RiskConfig defaults();
};

// The validated, immutable result. Shared by every worker; a reload builds a new one.
struct RiskPolicy {
  // Unique per built policy (never 0): per-thread memos key their entries by it, so a reload
  // (new databases, lists or risky countries) never reads an answer the old policy gave.
  uint32_t instanceId = 0;
  RiskConfig config;
  RiskScorer scorer;
  std::vector<std::string> levelNames;  // index 0 = level 1
  std::vector<uint8_t> levelDifficulty; // proof-of-work bits per level, 0 = external
  std::vector<ChallengeLadder> ladders; // ladders[0] is "default"
  std::vector<GeoIpDatabasePtr> geoip;
  ScalperListsPtr lists;
  std::vector<uint16_t> riskyCountries;  // two ASCII letters packed
  std::vector<uint32_t> riskyAsns;       // sorted
  PassTokenCodecPtr tokens;
  ChallengeTicketCodecPtr tickets;
  std::shared_ptr<const HmacSha256> verifierKey;  // null when no secret was given

  const ChallengeLadder& ladderFor(std::string_view profile) const;
  // "" for level 0.
  std::string_view levelName(uint8_t level) const;
  // 0 when unknown.
  uint8_t levelByName(std::string_view name) const;
};
using RiskPolicyPtr = std::shared_ptr<const RiskPolicy>;

// Validates `config`, opens its GeoIP databases and lists, derives keys. On any error returns null
// and appends one message per problem to *errors (e.g. "risk.profiles[1].thresholds[0]: unknown
// action 'captcha'", or a list's "file:line:col: message").
RiskPolicyPtr buildRiskPolicy(const RiskConfig& config, const RiskSecrets& secrets,
                              std::vector<std::string>* errors);

}  // namespace sluice::risk
