#include "risk/risk_engine.h"

#include <algorithm>

#include "core/hash.h"
#include "core/strings.h"

namespace sluice::risk {
namespace {

constexpr uint64_t kIpSeed = 0x1b, kDeviceSeed = 0x2d, kMemberSeed = 0x3e, kAddressSeed = 0x4f,
                   kItemSeed = 0x5a;

uint64_t nonZero(uint64_t h) { return h == 0 ? 1 : h; }

bool tokenLooksHostile(TokenStatus s) {
  return s == TokenStatus::kMalformed || s == TokenStatus::kForged ||
         s == TokenStatus::kUnknownKey || s == TokenStatus::kWrongSubject ||
         s == TokenStatus::kNotYetValid;
}

}  // namespace

int RiskDecision::pointsOf(std::string_view name) const {
  for (int i = 0; i < topCount; ++i)
    if (top[i].name == name) return top[i].points;
  return 0;
}

RiskEngine::RiskEngine(const RiskStateOptions& o)
    : behaviour_(o.behaviourMemoryPerKind), spent_(o.spentMemory) {}

uint64_t RiskEngine::ipKey(const IpAddress& ip) {
  return nonZero(hash64(std::string_view(reinterpret_cast<const char*>(ip.bytes.data()), 16), kIpSeed));
}
uint64_t RiskEngine::deviceKey(std::string_view id) {
  return id.empty() ? 0 : nonZero(hash64(id, kDeviceSeed));
}
uint64_t RiskEngine::memberKey(std::string_view id) {
  return id.empty() ? 0 : nonZero(hash64(id, kMemberSeed));
}

std::pair<EntityKind, uint64_t> RiskEngine::subjectOf(const RiskRequest& r) {
  if (!r.deviceId.empty()) return {EntityKind::kDevice, deviceKey(r.deviceId)};
  if (!r.memberId.empty()) return {EntityKind::kMember, memberKey(r.memberId)};
  return {EntityKind::kIp, ipKey(r.clientIp)};
}

namespace {

// The signals a client address earns from the GeoIP databases, as bits over kGeoSignals.
constexpr Signal kGeoSignals[] = {Signal::kGeoRiskyCountry, Signal::kGeoRiskyAsn, Signal::kIpHosting,
                                  Signal::kIpVpn,          Signal::kIpPublicProxy, Signal::kIpResidentialProxy,
                                  Signal::kIpTor};
constexpr int kGeoSignalCount = static_cast<int>(std::size(kGeoSignals));

// *prefixBits: the longest network any database answered for, so the answer holds for every
// address in that network.
uint8_t geoSignals(const RiskPolicy& policy, const IpAddress& ip, int* prefixBits) {
  GeoIpRecord geo;
  *prefixBits = 0;
  for (const auto& db : policy.geoip) {
    GeoIpRecord one;
    int bits = 0;
    if (db->lookup(ip, &one, false, &bits)) geo.merge(one);
    *prefixBits = std::max(*prefixBits, bits);
  }
  const bool flags[kGeoSignalCount] = {
      geo.country[0] && !policy.riskyCountries.empty() &&
          std::find(policy.riskyCountries.begin(), policy.riskyCountries.end(),
                    static_cast<uint16_t>(geo.country[0] << 8 | geo.country[1])) !=
              policy.riskyCountries.end(),
      geo.asn && std::binary_search(policy.riskyAsns.begin(), policy.riskyAsns.end(), geo.asn),
      geo.isHosting, geo.isVpn, geo.isPublicProxy, geo.isResidentialProxy, geo.isTor};
  uint8_t bits = 0;
  for (int i = 0; i < kGeoSignalCount; ++i) bits |= static_cast<uint8_t>(flags[i] ? 1u << i : 0u);
  return bits;
}

}  // namespace

GeoSignalMemo& GeoSignalMemo::forThisThread() {
  // Allocated on first use, so threads that never score pay nothing.
  thread_local std::unique_ptr<GeoSignalMemo> memo;
  if (!memo) memo = std::make_unique<GeoSignalMemo>();
  return *memo;
}

std::string_view RiskEngine::findCookie(const RiskRequest& r, std::string_view name) {
  if (r.cookies.isSplit()) return r.cookies.find(name);
  CookieJar jar;  // a caller that did not split them (tests, tools): one split, then the same find
  jar.split(r.headers);
  return jar.find(name);
}

RiskDecision RiskEngine::evaluate(const RiskPolicy& policy, const RiskRequest& r, Nanos now,
                                  const HeaderOrderFingerprint* precomputed) {
  RiskDecision d;
  const RiskConfig& cfg = policy.config;
  SignalSet signals;

  // Behaviour keys first: prefetching their table sets overlaps the misses with the work below.
  BehaviourEvent ev;
  ev.route = r.routeClass;
  ev.itemKey = r.itemId.empty() ? 0 : nonZero(hash64(r.itemId, kItemSeed));
  const auto keys = entityKeys(r);
  std::copy(keys.begin(), keys.end(), ev.keys);
  ev.addressKey = r.addressHash.empty() ? 0 : nonZero(hash64(r.addressHash, kAddressSeed));
  behaviour_.prefetch(ev);

  // Header order and User-Agent: one scan of the header names serves the UA analysis and the
  // fingerprint, and the split cookies serve the fingerprint and the pass token.
  CookieJar localJar;
  const CookieJar* jar = &r.cookies;
  if (!jar->isSplit()) {
    localJar.split(r.headers);
    jar = &localJar;
  }
  // Through the per-thread memo: a repeated name sequence skips the classify-and-hash pass.
  const HeaderScan scan = HeaderScan::ofMemoised(r.headers);
  HeaderOrderFingerprint computed;
  if (!precomputed)
    computed = HeaderOrderFingerprint::compose(r.method, r.httpMajor, r.httpMinor, scan, *jar);
  const std::string_view tokenCookie =
      policy.tokens != nullptr ? jar->find(cfg.tokens.cookie) : std::string_view{};
  const HeaderOrderFingerprint& fp = precomputed ? *precomputed : computed;
  d.fingerprint = fp.text;
  const UserAgentAnalysis ua = UserAgentAnalysis::analyze(r, scan, &UserAgentCache::forThisThread());
  if (ua.missing) signals.fire(Signal::kUaMissing);
  if (ua.automation) signals.fire(Signal::kUaAutomation);
  if (ua.headless) signals.fire(Signal::kUaHeadless);
  if (ua.hintsMismatch()) signals.fire(Signal::kUaHintsMismatch);
  if (ua.hintsMissing) signals.fire(Signal::kUaHintsMissing);
  if (ua.hintsGarbage) signals.fire(Signal::kUaHintsGarbage);
  if (ua.headerOrderMismatch) signals.fire(Signal::kUaHeaderOrderMismatch);

  // GeoIP.
  if (!policy.geoip.empty()) {
    GeoSignalMemo& memo = GeoSignalMemo::forThisThread();
    uint8_t fired = 0;
    if (!memo.find(policy.instanceId, r.clientIp, &fired)) {
      int prefixBits = 0;
      fired = geoSignals(policy, r.clientIp, &prefixBits);
      memo.store(policy.instanceId, r.clientIp, fired, prefixBits);
    }
    for (int i = 0; i < kGeoSignalCount; ++i)
      if (fired & (1u << i)) signals.fire(kGeoSignals[i]);
  }

  // Lists.
  if (policy.lists && !policy.lists->empty()) {
    ListQuery q;
    q.ip = &r.clientIp;
    q.memberId = r.memberId;
    q.deviceId = r.deviceId;
    q.addressHash = r.addressHash;
    q.fingerprint = fp.text;
    q.tlsFingerprint = r.tlsFingerprint;
    const ListMatch m = policy.lists->match(q, overlay_.current(r.wallSeconds * 1000));
    auto fireList = [&](ListKind k, Signal s) {
      if (int pts = m.pointsByKind[static_cast<int>(k)]; pts > 0) signals.fire(s, pts);
    };
    fireList(ListKind::kIp, Signal::kListIp);
    fireList(ListKind::kMember, Signal::kListMember);
    fireList(ListKind::kDevice, Signal::kListDevice);
    fireList(ListKind::kAddress, Signal::kListAddress);
    fireList(ListKind::kFingerprint, Signal::kFingerprintListed);
    fireList(ListKind::kTls, Signal::kTlsListed);
    if (m.allowed) {
      d.allowListed = true;
      d.allowList = m.firstAllow->name;
    }
  }

  const BehaviourConfig& bc = cfg.behaviour;
  const int shareMin = shareMinScore_.load(std::memory_order_relaxed);
  uint32_t shareFloor[kEntityKinds] = {};
  if (shareMin > 0) {
    const uint32_t n = shareInstances_.load(std::memory_order_relaxed);
    shareFloor[static_cast<int>(EntityKind::kIp)] = std::max<uint32_t>(1, bc.ipRateMax / n);
    shareFloor[static_cast<int>(EntityKind::kDevice)] = std::max<uint32_t>(1, bc.rateMax / n);
    shareFloor[static_cast<int>(EntityKind::kMember)] = std::max<uint32_t>(1, bc.rateMax / n);
  }
  const BehaviourObservation obs = behaviour_.observe(ev, bc.params, bc.regularMaxCv, cfg.scoreHalfLife,
                                                      now, shareMin > 0 ? shareFloor : nullptr);
  if (shareMin > 0) {
    for (int k = 0; k < kEntityKinds; ++k) {
      const EntityObservation& o = obs.entity[k];
      if (!o.shareCount) continue;
      SharedEntityUpdate u;
      u.kind = static_cast<EntityKind>(k);
      u.key = ev.keys[k];
      u.count = o.shareCount;
      u.sketchA = o.sketchA;
      u.sketchB = o.sketchB;
      share(u);
    }
  }
  const auto [subjectKind, subjectKey] = subjectOf(r);
  const EntityObservation& subject = obs.entity[static_cast<int>(subjectKind)];
  if (obs.ip().rate > bc.ipRateMax || (obs.device().present && obs.device().rate > bc.rateMax) ||
      (obs.member().present && obs.member().rate > bc.rateMax))
    signals.fire(Signal::kBehRateHigh);
  if (subject.regular) signals.fire(Signal::kBehRegularTiming);
  if (subject.checkoutWithoutView) signals.fire(Signal::kBehCheckoutWithoutView);
  if (subject.apiWithoutPage) signals.fire(Signal::kBehApiWithoutPage);
  if (obs.device().present && obs.device().distinctA > bc.maxMembersPerDevice)
    signals.fire(Signal::kBehMembersPerDevice);
  if (obs.ip().distinctA > bc.maxMembersPerIp) signals.fire(Signal::kBehMembersPerIp);
  if (obs.member().present && obs.member().distinctA > bc.maxDevicesPerMember)
    signals.fire(Signal::kBehDevicesPerMember);
  if (obs.member().present && obs.member().distinctB > bc.maxAddressesPerMember)
    signals.fire(Signal::kBehAddressesPerMember);
  if (subject.ladder.failures >= bc.challengeFailures && bc.challengeFailures > 0)
    signals.fire(Signal::kBehChallengeFailures);

  // Pass token.
  if (policy.tokens) {
    const std::string_view cookie = tokenCookie;
    if (!cookie.empty()) {
      const TokenCheck tc = policy.tokens->verify(cookie, {r.deviceId, r.memberId}, r.clientIp,
                                                  scan.value(r.headers, HeaderId::kUserAgent),
                                                  r.tlsFingerprint,
                                                  r.wallSeconds);
      d.tokenStatus = tc.status;
      if (tc.status == TokenStatus::kValid) {
        d.tokenLevel = tc.token.level;
        d.tokenIpChanged = tc.ipChanged;
        if (tc.ipChanged) signals.fire(Signal::kTokenIpChanged);
      } else if (tokenLooksHostile(tc.status)) {
        signals.fire(Signal::kTokenInvalid);
      }
    }
  }

  // Score, then carry-over from the entities' decaying scores.
  const ScoreResult sr = policy.scorer.score(signals, r.routeClass, r.extraSignals);
  d.requestScore = sr.score;
  d.firedSignals = signals.fired;
  d.top = sr.top;
  d.topCount = sr.topCount;
  float carried = std::max(obs.device().decayedScore, obs.member().decayedScore);
  carried = std::max(carried, obs.ip().decayedScore * static_cast<float>(cfg.ipCarryPercent) / 100.f);
  const int carriedScore = std::clamp(static_cast<int>(carried), 0, 100);
  d.score = std::max(sr.score, carriedScore);
  if (carriedScore > sr.score && d.topCount < kMaxTopSignals) {
    // Explain why the score is above this request's own points.
    std::move_backward(d.top.begin(), d.top.begin() + d.topCount, d.top.begin() + d.topCount + 1);
    d.top[0] = {"score.carried", carriedScore};
    ++d.topCount;
  }

  // Ladder.
  const ChallengeLadder& ladder = policy.ladderFor(r.profile.empty() ? "default" : r.profile);
  d.profile = ladder.profile();
  d.monitor = ladder.monitor();
  LadderState state = subject.ladder;
  LadderOutcome lo;
  if (d.allowListed) {
    lo.action = lo.wouldAction = RiskAction::kAllow;
  } else {
    lo = ladder.decide(d.score, d.tokenLevel, state, now);
  }
  d.action = lo.action;
  d.level = lo.level;
  d.levelName = policy.levelName(lo.level);
  d.wouldAction = lo.wouldAction;
  d.wouldLevel = lo.wouldLevel;
  d.wouldLevelName = policy.levelName(lo.wouldLevel);
  d.escalated = lo.escalated;
  d.fallback = lo.fallback;
  d.satisfiedByToken = lo.satisfiedByToken;

  // Remember this request's own score on every entity (decaying), and the subject's ladder; in
  // the same visit, whether the decision is news for the explain call.
  const bool explained = d.score >= kExplainMinScore;
  const ExplainStamp stamp{d.score, explainActionOf(d), kExplainRefresh};
  for (int k = 0; k < kEntityKinds; ++k) {
    if (ev.keys[k] == 0) continue;
    const bool isSubject = static_cast<int>(subjectKind) == k;
    if (sr.score == 0 && !(isSubject && lo.stateChanged)) {
      if (explained)
        d.explainDue[k] = behaviour_.explainDue(static_cast<EntityKind>(k), ev.keys[k], stamp.score,
                                                stamp.action, stamp.refresh, now);
      continue;
    }
    const int shared =
        behaviour_.commit(static_cast<EntityKind>(k), ev.keys[k], static_cast<float>(sr.score),
                          isSubject && lo.stateChanged ? &state : nullptr, cfg.scoreHalfLife, now,
                          shareMin, explained ? &stamp : nullptr, &d.explainDue[k]);
    if (shareMin <= 0) continue;
    const LadderState& before = subject.ladder;
    const bool ladderMoved = isSubject && lo.stateChanged &&
                             (state.escalation != before.escalation ||
                              state.pendingLevel != before.pendingLevel ||
                              state.failures != before.failures);
    if (shared >= 0 || ladderMoved) {
      SharedEntityUpdate u;
      u.kind = static_cast<EntityKind>(k);
      u.key = ev.keys[k];
      u.score = static_cast<uint8_t>(std::clamp(shared, 0, 100));
      u.hasLadder = ladderMoved;
      u.ladder = state;
      share(u);
    }
  }

  if (d.action == RiskAction::kChallenge && policy.tickets) {
    d.powDifficulty = policy.levelDifficulty[d.level - 1];
    const auto subj = policy.tokens->subjectOf({r.deviceId, r.memberId});
    d.ticket = policy.tickets->issue(d.level, d.powDifficulty, subj, r.wallSeconds,
                                     cfg.challenge.ticketTtl / kSeconds);
  }
  return d;
}

void RiskEngine::raiseScore(const RiskPolicy& policy, const RiskRequest& r, int score, Nanos now) {
  if (score <= 0) return;
  const int shareMin = shareMinScore_.load(std::memory_order_relaxed);
  const auto keys = entityKeys(r);
  for (int k = 0; k < kEntityKinds; ++k) {
    if (keys[k] == 0) continue;
    const int shared = behaviour_.commit(static_cast<EntityKind>(k), keys[k],
                                         static_cast<float>(std::min(score, 100)), nullptr,
                                         policy.config.scoreHalfLife, now, shareMin);
    if (shareMin > 0 && shared >= 0) {
      SharedEntityUpdate u;
      u.kind = static_cast<EntityKind>(k);
      u.key = keys[k];
      u.score = static_cast<uint8_t>(std::clamp(shared, 0, 100));
      share(u);
    }
  }
}

void RiskEngine::recordChallengeResult(const RiskPolicy& policy, const RiskRequest& r,
                                       uint8_t level, bool passed, Nanos now) {
  (void)level;
  const auto [kind, key] = subjectOf(r);
  const uint8_t levels = static_cast<uint8_t>(policy.levelNames.size());
  LadderState after;
  const bool found = behaviour_.updateLadder(kind, key, [&](LadderState& s) {
    ChallengeLadder::onResult(s, passed, levels);
    after = s;
  });
  if (found && shareMinScore_.load(std::memory_order_relaxed) > 0) {
    SharedEntityUpdate u;
    u.kind = kind;
    u.key = key;
    u.hasLadder = true;
    u.ladder = after;
    share(u);
  }
  if (!found) {
    // First sight of this subject is a challenge answer: record it so failures count.
    BehaviourEvent ev;
    ev.keys[static_cast<int>(kind)] = key;
    behaviour_.observe(ev, policy.config.behaviour.params, policy.config.behaviour.regularMaxCv,
                       policy.config.scoreHalfLife, now);
    behaviour_.updateLadder(kind, key, [&](LadderState& s) {
      ChallengeLadder::onResult(s, passed, levels);
    });
  }
}

void RiskEngine::recordOutcome(const RiskPolicy& policy, const RiskRequest& r, int status,
                               Nanos now) {
  if ((status == 401 || status == 403) &&
      (r.routeClass == RouteClass::kCheckout || r.routeClass == RouteClass::kApi)) {
    const auto [kind, key] = subjectOf(r);
    behaviour_.updateLadder(kind, key, [](LadderState& s) {
      if (s.failures < 255) ++s.failures;
    });
  }
  (void)policy;
  (void)now;
}

std::string RiskEngine::issueToken(const RiskPolicy& policy, const RiskRequest& r,
                                   uint8_t level) const {
  return policy.tokens->issue({r.deviceId, r.memberId}, level, policy.config.tokens.policyVersion,
                              r.clientIp, r.header("user-agent"), r.tlsFingerprint, r.wallSeconds,
                              policy.config.tokens.ttl / kSeconds);
}

RedeemResult RiskEngine::redeemProofOfWork(const RiskPolicy& policy, const RiskRequest& r,
                                           std::string_view ticket, std::string_view counter,
                                           Nanos now) {
  RedeemResult out;
  if (!policy.tickets || !policy.tokens) return out;
  const auto subj = policy.tokens->subjectOf({r.deviceId, r.memberId});
  ChallengeTicket t;
  out.powStatus = verifyProofOfWork(*policy.tickets, spent_, ticket, counter, &subj, r.wallSeconds, &t);
  out.replayed = out.powStatus == PowStatus::kReplayed;
  if (out.powStatus == PowStatus::kOk) {
    out.ok = true;
    out.level = t.level;
    out.spentId = t.nonceHex();
    out.spentUntilUnix = t.expiresAt;
    recordChallengeResult(policy, r, t.level, true, now);
    out.token = issueToken(policy, r, t.level);
  } else if (out.powStatus == PowStatus::kBadSolution) {
    recordChallengeResult(policy, r, t.level, false, now);
  }
  return out;
}

RedeemResult RiskEngine::redeemVerifierReport(const RiskPolicy& policy, const RiskRequest& r,
                                              const VerifierReport& report,
                                              std::string_view signature, Nanos now) {
  RedeemResult out;
  if (!policy.verifierKey || !policy.tickets || !policy.tokens) return out;
  out.verifierStatus = checkVerifierReport(*policy.verifierKey, report, signature, r.wallSeconds,
                                           policy.config.challenge.verifierMaxSkew / kSeconds);
  if (out.verifierStatus != VerifierStatus::kOk) return out;
  // The ticket must be ours, live, issued to this browser's subject, for the level reported.
  const auto subj = policy.tokens->subjectOf({r.deviceId, r.memberId});
  ChallengeTicket t;
  if (policy.tickets->open(report.ticket, &subj, r.wallSeconds, &t) != TicketStatus::kOk ||
      policy.levelName(t.level) != report.level) {
    out.verifierStatus = VerifierStatus::kMalformed;
    return out;
  }
  if (!spent_.markSpent(std::string_view(reinterpret_cast<const char*>(t.nonce.data()), 16),
                        t.expiresAt, r.wallSeconds)) {
    out.replayed = true;
    return out;
  }
  out.level = t.level;
  out.spentId = t.nonceHex();
  out.spentUntilUnix = t.expiresAt;
  recordChallengeResult(policy, r, t.level, report.passed, now);
  if (report.passed) {
    out.ok = true;
    out.token = issueToken(policy, r, t.level);
  }
  return out;
}

void RiskEngine::share(const SharedEntityUpdate& u) {
  OutboxShard& shard = outbox_[(u.key * 0x9E3779B97F4A7C15ULL) >> 61];
  std::lock_guard<std::mutex> lk(shard.mu);
  // Past the cap updates are dropped: sharing is best effort and must not grow without bound
  // while the control thread cannot publish (Redis away).
  if (shard.items.size() < kMaxSharedQueued) shard.items.push_back(u);
}

void RiskEngine::drainShared(std::vector<SharedEntityUpdate>* out) {
  for (auto& shard : outbox_) {
    std::lock_guard<std::mutex> lk(shard.mu);
    out->insert(out->end(), shard.items.begin(), shard.items.end());
    shard.items.clear();
  }
}

void RiskEngine::applyShared(const RiskPolicy& policy, const SharedEntityUpdate& u,
                             uint32_t ageSeconds, Nanos now) {
  LadderState ladder = u.ladder;
  ladder.pendingSince = u.ladder.pendingLevel ? secondsTick(now) : 0;
  if (u.score > 0 || u.hasLadder)
    behaviour_.merge(u.kind, u.key, static_cast<float>(u.score), ageSeconds,
                     u.hasLadder ? &ladder : nullptr, policy.config.scoreHalfLife,
                     policy.config.behaviour.params.idleAfter, now);
  if (u.count > 0 || u.sketchA || u.sketchB)
    behaviour_.mergeCounts(u.kind, u.key, u.count, u.sketchA, u.sketchB,
                           policy.config.behaviour.params, now);
}

}  // namespace sluice::risk
