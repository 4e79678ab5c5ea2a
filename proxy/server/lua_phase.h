#pragma once
// The Lua policy hooks (docs/lua-api.md): access (after risk, may answer or suspend while
// sub-requests run), aggregate (the content of aggregation routes), header_filter and log.
// A feature unit: ClientConnection calls these and knows nothing else about Lua.
#include "proxy/server/phase_result.h"

namespace sluice {

class ClientConnection;
struct RouteConfig;
struct LuaExchangeState;  // per request, defined in lua_phase.cc

class LuaPhase {
 public:
  // kSuspended: the policy yielded; the phase calls ClientConnection::resumeAfterAccess() (or
  // answers) later, from the connection's loop.
  static PhaseResult access(ClientConnection& conn, const RouteConfig& route);
  // Content of a route whose response a Lua aggregate handler produces. kContinue when the route
  // has none (then the upstream is used).
  static PhaseResult aggregate(ClientConnection& conn, const RouteConfig& route);
  static void log(ClientConnection& conn);
};

}  // namespace sluice
