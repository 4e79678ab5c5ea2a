#pragma once
// Admin API over the risk engine's named lists (docs/operations.md, "Lists"):
//   GET    /lists                      every configured list: kind, file, entries from the file
//                                      and entries added at run time
//   GET    /lists/{name}               the run-time entries (with expiry); ?match=VALUE says whether
//                                      VALUE is listed and where from (file / run time)
//   POST   /lists/{name}               {"entries": [...], "ttl": "30m"} (or "entry": "x") adds
//   DELETE /lists/{name}               {"entries": [...]} or ?entry=VALUE removes run-time entries
// Every entry of a call is validated before any is applied: one bad entry is a 400 naming it and
// changes nothing. Run-time entries survive reloads (risk/list_overlay.h); with cluster list sync
// on they are also written to Redis and pushed to every instance (proxy/cluster/risk_sync.h).
#include <string>
#include <string_view>
#include <utility>

namespace sluice {

struct Config;

// `rest` is the path after "/lists" ("" or "/{name}"). Returns {status, JSON body}.
std::pair<int, std::string> listsAdmin(const Config& cfg, std::string_view method,
                                       std::string_view rest, std::string_view query,
                                       std::string_view body);

}  // namespace sluice
