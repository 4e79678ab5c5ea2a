#include "proxy/server/lua_phase.h"

#include "proxy/server/client_connection.h"

namespace sluice {

// Stubs until the Lua issue wires lua/ in: no policy runs.
PhaseResult LuaPhase::access(ClientConnection&, const RouteConfig&) { return PhaseResult::kContinue; }
PhaseResult LuaPhase::aggregate(ClientConnection&, const RouteConfig&) { return PhaseResult::kContinue; }
void LuaPhase::log(ClientConnection&) {}

}  // namespace sluice
