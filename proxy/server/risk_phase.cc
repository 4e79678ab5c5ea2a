#include "proxy/server/risk_phase.h"

#include "proxy/server/client_connection.h"

namespace sluice {

// Stubs until the risk issue wires risk/ in: every request continues.
PhaseResult RiskPhase::run(ClientConnection&, const RouteConfig&) { return PhaseResult::kContinue; }
void RiskPhase::log(ClientConnection&) {}

}  // namespace sluice
