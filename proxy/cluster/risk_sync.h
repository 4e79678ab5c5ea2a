#pragma once
// Cluster risk sync (docs/cluster.md, "Shared lists" and "Shared risk state"): what the risk
// engines of all instances share through Redis.
//
// Entity state (redis.share_risk): scores that climbed a band and ladder moves, queued by the
// engine (RiskEngine::drainShared) and published every share_interval on KEY_PREFIX "risk";
// every instance merges its peers' updates (RiskEngine::applyShared). Best effort: a lost
// message is retold by the entity's next band or ladder move.
//
// Lists (redis.sync_lists): run-time entries of the risk engine's named lists
// (risk/list_overlay.h):
//
//   storage   one sorted set per list, KEY_PREFIX "list:" NAME; member = the entry's canonical
//             text, score = its expiry in Unix milliseconds ("+inf" = none)
//   push      PUBLISH KEY_PREFIX "lists" with a tab-separated message:
//               add <TAB> LIST <TAB> EXPIRES_MS <TAB> ENTRY [<TAB> ENTRY ...]   (0 = no expiry)
//               del <TAB> LIST <TAB> ENTRY [<TAB> ENTRY ...]
//             every instance is subscribed and applies it at once; entries never hold tabs
//   heal      a full read of every configured list (ZRANGEBYSCORE) on each (re)subscribe and every
//             `redis.lists_resync_interval`, so a message lost while an instance was cut off is
//             caught up; an external system may write the sets and publish the same messages
//
// Everything runs on the control thread (admin calls, its own RedisClient and subscriber
// connection); the data path only sees the overlay's snapshots. Writes that fail while Redis is
// away stay applied locally and are queued (bounded) until Redis answers again.
#include <uv.h>

#include <string>
#include <vector>

#include "risk/scalper_lists.h"

namespace sluice {

struct Config;

class RiskSync {
 public:
  // Control thread, at start and after each reload: starts, restarts (settings changed) or stops.
  static void configure(uv_loop_t* loop, const Config& cfg);
  static void shutdown();
  // An admin change already applied to the local overlay: write it to Redis and publish it.
  static void publishAdd(const Config& cfg, const std::string& list, risk::ListKind kind,
                         const std::vector<risk::ListEntry>& entries, int64_t expires_ms);
  static void publishRemove(const Config& cfg, const std::string& list,
                            const std::vector<std::string>& canonical);
  // {"enabled":..., "subscribed":..., "messages":..., "resyncs":..., ...} for GET /lists.
  static std::string statusJson();
};

}  // namespace sluice
