#pragma once
// RiskEngine: the facade the proxy's risk phase calls. It owns the process-wide state (behaviour
// tables, the spent-ticket set) and reads an immutable RiskPolicy per call, so a reload swaps the
// policy while the state carries over.
//
//   evaluate()               fingerprint + UA + GeoIP + lists + behaviour + token -> score -> ladder
//   recordChallengeResult()  feedback: a challenge was passed or failed
//   redeemProofOfWork()      a PoW submission: verify, record, issue a pass token
//   redeemVerifierReport()   a signed external verifier report: verify, record, issue a token
//   recordOutcome()          the response status, after the upstream answered
#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>
#include <memory>
#include <string>

#include "risk/header_order_fingerprint.h"
#include "risk/list_overlay.h"
#include "risk/proof_of_work.h"
#include "risk/risk_config.h"
#include "risk/spent_set.h"
#include "risk/user_agent.h"
#include "risk/verifier_signature.h"

namespace sluice::risk {

struct RiskDecision {
  int score = 0;                 // 0..100, after carry-over from the entity's decaying score
  int requestScore = 0;          // this request's own signals only
  RiskAction action = RiskAction::kAllow;
  uint8_t level = 0;             // challenge level (1-based) when action is kChallenge
  std::string_view levelName;    // valid while the policy lives
  // What the ladder would have done; equals action/level outside monitor mode.
  RiskAction wouldAction = RiskAction::kAllow;
  uint8_t wouldLevel = 0;
  std::string_view wouldLevelName;
  bool monitor = false;
  std::string_view profile;
  // Explanation: the largest contributions, largest first.
  std::array<SignalContribution, kMaxTopSignals> top{};
  int topCount = 0;
  uint64_t firedSignals = 0;     // bit per Signal
  TokenStatus tokenStatus = TokenStatus::kAbsent;
  uint8_t tokenLevel = 0;        // level of a valid token
  bool tokenIpChanged = false;
  bool escalated = false;
  bool fallback = false;
  bool satisfiedByToken = false;
  bool allowListed = false;
  std::string_view allowList;    // name of the allow list that matched
  FingerprintText fingerprint;   // header-order fingerprint text, for the access log
  // Set when action is kChallenge: the sealed ticket and, for PoW levels, its difficulty.
  std::string ticket;
  uint8_t powDifficulty = 0;
  // Per EntityKind: this decision is news for the admin explain call (score >= kExplainMinScore
  // and the entity's last recorded score or action differed, or kExplainRefresh passed). Marked
  // as recorded on the entity by evaluate(): the caller that keeps explain records stores these.
  bool explainDue[kEntityKinds] = {};

  bool fired(Signal s) const { return firedSignals & (uint64_t{1} << static_cast<int>(s)); }
  int pointsOf(std::string_view name) const;  // 0 when not among the top contributions
};

// The admin explain call's records (kept by the proxy): decisions below kExplainMinScore are not
// worth explaining (and most traffic is), and an entity's unchanged decision is recorded again
// after kExplainRefresh so its time and top signals stay recent.
inline constexpr int kExplainMinScore = 20;
inline constexpr Nanos kExplainRefresh = kSeconds;
inline constexpr const char* kExplainActionNames[] = {"allow", "challenge", "block", "monitor"};
// The decision's index into kExplainActionNames ("monitor": monitor mode would have acted).
inline uint8_t explainActionOf(const RiskDecision& d) {
  return d.action == RiskAction::kChallenge                   ? 1
         : d.action == RiskAction::kBlock                     ? 2
         : d.monitor && d.wouldAction != RiskAction::kAllow   ? 3
                                                              : 0;
}

struct RiskStateOptions {
  size_t behaviourMemoryPerKind = size_t{16} << 20;
  size_t spentMemory = size_t{4} << 20;
};

struct RedeemResult {
  PowStatus powStatus = PowStatus::kBadTicket;
  VerifierStatus verifierStatus = VerifierStatus::kMalformed;
  bool ok = false;
  bool replayed = false;
  uint8_t level = 0;
  std::string token;  // the pass-token cookie value when ok
  // The redeemed ticket, for a cluster-wide single-use check (hex nonce; until when it matters).
  std::string spentId;
  int64_t spentUntilUnix = 0;
};

// Entity state one instance tells the others (cluster sharing, docs/cluster.md "Shared risk
// state"): a score that climbed into a new band, or a subject's new ladder state.
struct SharedEntityUpdate {
  EntityKind kind = EntityKind::kIp;
  uint64_t key = 0;
  uint8_t score = 0;       // 0 with a ladder-only update (merging takes the max)
  bool hasLadder = false;
  LadderState ladder;      // pendingSince is local to each instance and not carried
  // Behaviour counters: requests this instance saw above the share floor since it last told,
  // and the entity's related-id sketches (members per device, ...), OR-ed by the peers.
  uint16_t count = 0;
  uint64_t sketchA = 0, sketchB = 0;
};

// Per-thread memo of the GeoIP signals of a client address: the database walks (with full-size
// databases, a dozen cache misses each; ~780 instructions for the three test databases) are paid
// once per network per policy. Databases answer per network (MMDB's netmask), so an answer that
// holds for the whole /24 (IPv4) or /48 (IPv6) around the address -- every database's network is
// that wide or wider -- is stored once for the block: a carrier NAT range, a campus or a data
// centre then shares one entry. Narrower answers are stored per address. Direct-mapped, 4096
// entries of 24 bytes per thread; the whole (masked) address, its kind and the policy's
// instanceId are compared, so a reload's new databases or risky lists never see an old answer and
// a collision only costs a fresh lookup.
class GeoSignalMemo {
 public:
  static constexpr size_t kEntries = 4096;
  static constexpr int kBlockBitsV4 = 24;
  static constexpr int kBlockBitsV6 = 48;
  static GeoSignalMemo& forThisThread();
  bool find(uint32_t policy, const IpAddress& ip, uint8_t* bits) const {
    const Kind blockKind = ip.v4 ? Kind::kBlockV4 : Kind::kBlockV6;
    const std::array<uint8_t, 16> block = blockOf(ip);
    if (const Entry& b = entries_[indexOf(block, blockKind)];
        b.policy == policy && b.kind == blockKind && b.address == block) {
      *bits = b.bits;
      return true;
    }
    const Entry& e = entries_[indexOf(ip.bytes, Kind::kAddress)];
    if (e.policy != policy || e.kind != Kind::kAddress || e.address != ip.bytes) return false;
    *bits = e.bits;
    return true;
  }
  // `prefixBits`: the longest network any database answered for (GeoIpDatabase::lookup); the
  // answer is stored for the address's block when that is no longer than the block.
  void store(uint32_t policy, const IpAddress& ip, uint8_t bits, int prefixBits) {
    const bool wholeBlock = prefixBits <= (ip.v4 ? kBlockBitsV4 : kBlockBitsV6);
    const Kind kind = !wholeBlock ? Kind::kAddress : ip.v4 ? Kind::kBlockV4 : Kind::kBlockV6;
    const std::array<uint8_t, 16> address = wholeBlock ? blockOf(ip) : ip.bytes;
    Entry& e = entries_[indexOf(address, kind)];
    e.address = address;
    e.policy = policy;
    e.kind = kind;
    e.bits = bits;
  }

 private:
  enum class Kind : uint8_t { kAddress, kBlockV4, kBlockV6 };
  struct Entry {
    std::array<uint8_t, 16> address{};
    uint32_t policy = 0;  // 0: empty (policies are numbered from 1)
    Kind kind = Kind::kAddress;
    uint8_t bits = 0;
  };
  // IPv4 addresses sit in the last four bytes (IPv4-mapped form).
  static std::array<uint8_t, 16> blockOf(const IpAddress& ip) {
    std::array<uint8_t, 16> out = ip.bytes;
    if (ip.v4) {
      out[15] = 0;
    } else {
      std::memset(out.data() + kBlockBitsV6 / 8, 0, 16 - kBlockBitsV6 / 8);
    }
    return out;
  }
  static size_t indexOf(const std::array<uint8_t, 16>& address, Kind kind) {
    uint64_t lo, hi;
    std::memcpy(&lo, address.data(), 8);
    std::memcpy(&hi, address.data() + 8, 8);
    hi ^= static_cast<uint64_t>(kind) << 56;
    return static_cast<size_t>(((hi ^ (lo * 0x9E3779B97F4A7C15ULL)) * 0xBF58476D1CE4E5B9ULL) >> 52);
  }
  Entry entries_[kEntries];
};

class RiskEngine;
using RiskEnginePtr = std::shared_ptr<RiskEngine>;

class RiskEngine {
 public:
  explicit RiskEngine(const RiskStateOptions& options);

  // `fingerprint` may be passed when identify already computed it.
  RiskDecision evaluate(const RiskPolicy& policy, const RiskRequest& request, Nanos now,
                        const HeaderOrderFingerprint* fingerprint = nullptr);

  // Points a caller (a Lua policy) added after evaluate() decided: `score` is the request's own
  // score with them, 0..100. Each entity's decaying score rises to it (never falls: negative
  // points only change this request's score), so the entity's next request sees it.
  void raiseScore(const RiskPolicy& policy, const RiskRequest& request, int score, Nanos now);

  void recordChallengeResult(const RiskPolicy& policy, const RiskRequest& request, uint8_t level,
                             bool passed, Nanos now);
  // 401/403 answers from the upstream to a checkout/login count as failures of the subject.
  void recordOutcome(const RiskPolicy& policy, const RiskRequest& request, int httpStatus,
                     Nanos now);

  RedeemResult redeemProofOfWork(const RiskPolicy& policy, const RiskRequest& request,
                                 std::string_view ticket, std::string_view counter, Nanos now);
  // `request` is the browser's request relaying the verifier's signed report.
  RedeemResult redeemVerifierReport(const RiskPolicy& policy, const RiskRequest& request,
                                    const VerifierReport& report, std::string_view signature,
                                    Nanos now);

  BehaviourTracker& behaviour() { return behaviour_; }
  SpentSet& spent() { return spent_; }
  // Cluster sharing: with minScore > 0, entities whose score climbs into a new band of 10 at or
  // above it, and subjects whose ladder moves (escalation, pending level, failures), are queued
  // for the control thread to publish. 0 turns it off (the default: nothing is queued).
  // `instances` (>= 2) sets the behaviour counters' share floor: an entity's requests are told
  // to peers once its rate here reaches rate_max / instances (what it would be if a client over
  // the limit were spread evenly), so humans cost nothing and a spread-out scalper adds up.
  void setSharing(int minScore, uint32_t instances = 2) {
    shareInstances_.store(std::max<uint32_t>(instances, 2), std::memory_order_relaxed);
    shareMinScore_.store(minScore, std::memory_order_relaxed);
  }
  // Moves the queued updates into *out (appending); at most kMaxSharedQueued wait per shard.
  void drainShared(std::vector<SharedEntityUpdate>* out);
  // A peer's update, `ageSeconds` old: merged into the local tables (max score, its ladder).
  void applyShared(const RiskPolicy& policy, const SharedEntityUpdate& update,
                   uint32_t ageSeconds, Nanos now);
  static constexpr size_t kMaxSharedQueued = 4096;
  // Run-time entries of the named lists (admin API, cluster sync); survive policy swaps.
  ListOverlay& listOverlay() { return overlay_; }

  // Entity keys, exposed for tests and the explain call.
  // The request's entity keys by EntityKind (IP, device, member; 0 for an absent id).
  static std::array<uint64_t, kEntityKinds> entityKeys(const RiskRequest& request) {
    return {ipKey(request.clientIp), deviceKey(request.deviceId), memberKey(request.memberId)};
  }
  static uint64_t ipKey(const IpAddress& ip);
  static uint64_t deviceKey(std::string_view id);
  static uint64_t memberKey(std::string_view id);
  // The pass-token cookie's value among the request's Cookie headers (empty when absent).
  static std::string_view findCookie(const RiskRequest& request, std::string_view name);

 private:
  // The entity escalation is stored on: device, else member, else IP.
  static std::pair<EntityKind, uint64_t> subjectOf(const RiskRequest& request);
  std::string issueToken(const RiskPolicy& policy, const RiskRequest& request, uint8_t level) const;

  BehaviourTracker behaviour_;
  void share(const SharedEntityUpdate& u);

  SpentSet spent_;
  ListOverlay overlay_;
  std::atomic<int> shareMinScore_{0};
  std::atomic<uint32_t> shareInstances_{2};
  struct alignas(64) OutboxShard {
    std::mutex mu;
    std::vector<SharedEntityUpdate> items;
  };
  std::array<OutboxShard, 8> outbox_;
};

}  // namespace sluice::risk
