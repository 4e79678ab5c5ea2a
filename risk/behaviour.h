#pragma once
// BehaviourTracker: what each entity (client IP, device, member) has been doing lately, in
// fixed-size per-entity records inside byte-bounded limiter::KeyTables (one table per entity kind,
// so an IP-rotation flood cannot evict member histories).
//
// Per entity, all bounded: a two-bucket sliding-window request rate; the last 8 inter-arrival gaps
// (perfectly regular timing is a script's tell); the last 4 item-detail views and the last page
// view (checkout without viewing the item, API calls with no page at all); two 64-bit
// linear-counting sketches of distinct related ids (members per device/IP, devices and addresses
// per member) over a tumbling window; challenge escalation; a decaying score.
//
// An entity unseen for `idleAfter` is equivalent to a new one: its record is reset on access and
// is the first to be evicted, so eviction never changes a decision that still matters.
#include <cmath>
#include <cstdint>
#include <memory>

#include "core/clock.h"
#include "limiter/key_table.h"
#include "risk/challenge_ladder.h"
#include "risk/risk_request.h"

namespace sluice::risk {

enum class EntityKind : uint8_t { kIp = 0, kDevice = 1, kMember = 2 };
constexpr int kEntityKinds = 3;

struct BehaviourParams {
  Nanos rateWindow = 60 * kSeconds;
  Nanos itemViewWindow = 10 * 60 * kSeconds;  // checkout needs an item view this recent
  Nanos pageViewWindow = 30 * 60 * kSeconds;  // API calls need a page view this recent
  Nanos distinctWindow = 60 * 60 * kSeconds;  // tumbling window of the distinct-id sketches
  Nanos idleAfter = 60 * 60 * kSeconds;       // unseen this long = forgotten
  int regularMinSamples = 6;                  // gaps needed before judging regularity (<= 8)
};

struct EntityState {
  uint64_t lastSeenMs = 0;     // 0 = never
  uint32_t windowStart = 0;    // seconds tick of the current rate bucket
  uint16_t windowCount = 0;
  uint16_t prevWindowCount = 0;
  uint16_t gapsMs[8] = {};     // ring of the last inter-arrival gaps, capped at 65535 ms
  uint8_t gapCount = 0;
  uint8_t gapHead = 0;
  uint16_t itemFp[4] = {};     // 16-bit fingerprints of recently viewed items (0 = empty)
  uint16_t explainedAt = 0;    // low 16 bits of the seconds tick of the last explain record
  uint32_t itemSeen[4] = {};   // seconds ticks of those views
  uint32_t lastPageView = 0;   // seconds tick
  uint32_t sketchEpoch = 0;    // seconds tick the sketches were cleared
  uint8_t explainedScore = 0;  // score + 1 of the last explain record (0 = none yet)
  uint8_t explainedAction = 0;
  uint64_t sketchA = 0;        // IP/device: members; member: devices
  uint64_t sketchB = 0;        // IP: devices; device and member: addresses
  float score = 0;             // decaying score, as of scoreAt
  uint32_t scoreAt = 0;        // seconds tick
  LadderState ladder;
  // Cluster sharing: the score band (score / 10) last published or learned from a peer, so an
  // entity is published once per band it climbs, not once per request.
  uint8_t sharedBand = 0;
  // Requests seen here above the share floor and not yet told to peers (saturating).
  uint8_t unreported = 0;
  // Peers' requests for this entity, an exponentially decaying count (time constant = the rate
  // window) as of remoteAt (seconds tick, low 16 bits), added to the local rate.
  uint16_t remoteAt = 0;
  float remoteCount = 0;
};
// 112 bytes: four ways per 512-byte set. New fields go in the alignment holes.
static_assert(sizeof(EntityState) == 112);

// What one entity looks like after recording this request.
struct EntityObservation {
  bool present = false;
  uint32_t rate = 0;           // requests in the last rateWindow (sliding estimate)
  bool regular = false;        // inter-arrival gaps have CV below the threshold
  // The gaps judged (0 when too few, or a mean under 1 ms): their count, sum and n*sum(g^2) -
  // sum(g)^2, so the coefficient of variation is sqrt(spread) / sum.
  uint8_t gapSamples = 0;
  uint32_t gapSum = 0;
  uint64_t gapSpread = 0;
  float gapCv() const {  // -1 when not judged
    return gapSamples ? static_cast<float>(std::sqrt(static_cast<double>(gapSpread)) / gapSum) : -1.f;
  }
  uint32_t distinctA = 0;      // estimates from the sketches
  uint32_t distinctB = 0;
  bool checkoutWithoutView = false;
  bool apiWithoutPage = false;
  float decayedScore = 0;
  LadderState ladder;
  // Cluster sharing: requests to tell peers now (0 = none), with the entity's sketches.
  uint8_t shareCount = 0;
  uint64_t sketchA = 0, sketchB = 0;
};

struct BehaviourEvent {
  RouteClass route = RouteClass::kOther;
  uint64_t itemKey = 0;     // hash64(item id), 0 = none
  uint64_t keys[kEntityKinds] = {};  // hash64 of the ip/device/member; 0 = absent
  uint64_t addressKey = 0;  // hash64(address hash), 0 = none
};

// A decision as the admin explain call records it: see BehaviourTracker::explainDue.
struct ExplainStamp {
  int score = 0;
  uint8_t action = 0;
  Nanos refresh = kSeconds;
};

struct BehaviourObservation {
  EntityObservation entity[kEntityKinds];
  const EntityObservation& ip() const { return entity[0]; }
  const EntityObservation& device() const { return entity[1]; }
  const EntityObservation& member() const { return entity[2]; }
};

class BehaviourTracker;
using BehaviourTrackerPtr = std::shared_ptr<BehaviourTracker>;

class BehaviourTracker {
 public:
  // 512-byte sets: 4 ways of 112-byte entries, so a probe touches at most 8 cache lines.
  using Table = limiter::KeyTable<EntityState, 512>;
  static_assert(Table::kWays == 4, "EntityState outgrew its 4-way 512-byte set");

  // `memoryPerKind` bytes for each of the three tables.
  explicit BehaviourTracker(size_t memoryPerKind);

  // Records one request for every entity present and returns what each looks like now.
  // `regularMaxCv` is the coefficient-of-variation threshold; `halfLife` decays stored scores.
  // `shareFloor` (per EntityKind, null or 0 = off): an entity whose rate here is at least its
  // floor has its requests counted for peers; they are handed out (EntityObservation.shareCount)
  // in chunks of max(1, floor / 8).
  BehaviourObservation observe(const BehaviourEvent& event, const BehaviourParams& params,
                               double regularMaxCv, Nanos halfLife, Nanos now,
                               const uint32_t* shareFloor = nullptr);
  // Peers' requests and related-id sketches for an entity (what they counted above the floor).
  void mergeCounts(EntityKind kind, uint64_t key, uint32_t count, uint64_t sketchA,
                   uint64_t sketchB, const BehaviourParams& params, Nanos now);

  // Starts loading the entities' sets; evaluate() calls it first so the cache misses overlap
  // with the fingerprint and UA work.
  void prefetch(const BehaviourEvent& event) const {
    for (int k = 0; k < kEntityKinds; ++k)
      if (event.keys[k] != 0) tables_[k]->prefetch(event.keys[k]);
  }

  // Stores the request's score into the entity (kept as the max of it and the decayed score) and,
  // when `ladder` is non-null, the entity's new ladder state.
  // With `shareMinScore` > 0, returns the stored score when it rose into a new band of 10 points
  // at or above shareMinScore since last shared (the caller publishes it), else -1.
  // With `explain` non-null, also does explainDue()'s check and mark in the same visit to the
  // entity and sets *explainDue (one set lock per entity, not two).
  int commit(EntityKind kind, uint64_t key, float score, const LadderState* ladder,
             Nanos halfLife, Nanos now, int shareMinScore = 0,
             const ExplainStamp* explain = nullptr, bool* explainDue = nullptr);
  // A peer instance's view of an entity: its score `ageSeconds` ago (kept as the max with ours,
  // both decayed) and, when non-null, its ladder state (the peer saw the latest challenge).
  void merge(EntityKind kind, uint64_t key, float score, uint32_t ageSeconds,
             const LadderState* ladder, Nanos halfLife, Nanos idleAfter, Nanos now);
  // Whether the admin explain log should get this entity's decision now (then marked as
  // recorded): its score or action differs from the last one recorded, or `refresh` passed since.
  // A busy entity's identical decisions are then recorded once per refresh, not per request, so
  // they do not push other entities' records out of the proxy's bounded log.
  // False when the entity is not in the table.
  bool explainDue(EntityKind kind, uint64_t key, int score, uint8_t action, Nanos refresh, Nanos now);

  // Applies fn(LadderState&) to an entity's ladder state (challenge results).
  template <class Fn>
  bool updateLadder(EntityKind kind, uint64_t key, Fn&& fn) {
    auto r = tables_[static_cast<int>(kind)]->apply(
        key, limiter::Lookup::kFindOnly, [](const EntityState&) { return limiter::EntryStatus::kActive; },
        [&](EntityState& s, bool) {
          fn(s.ladder);
          return limiter::EntryAction::kKeep;
        });
    return r == limiter::TableResult::kFound;
  }
  // A copy of an entity's record, for tests and the explain call.
  bool read(EntityKind kind, uint64_t key, EntityState* out) const;

  const Table& table(EntityKind kind) const { return *tables_[static_cast<int>(kind)]; }

  static float decay(float score, uint32_t scoreAt, uint32_t nowTick, Nanos halfLife);
  // exp2(-elapsed / halfLife), the decay over whole seconds; halfLife > 0.
  static double decayFactor(uint32_t elapsedSeconds, Nanos halfLife);
  // Linear counting over 64 bits: exact for 1, then an estimate good to a few hundred.
  static uint32_t sketchEstimate(uint64_t sketch);
  static uint64_t sketchBit(uint64_t key) { return uint64_t{1} << ((key * 0x9E3779B97F4A7C15ULL) >> 58); }

 private:
  std::unique_ptr<Table> tables_[kEntityKinds];
};

}  // namespace sluice::risk
