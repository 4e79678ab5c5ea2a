#pragma once
// The risk phase (docs/request-lifecycle.md): after the limit phase, before Lua access. Scores the
// request with risk/ (RiskEngine), answers challenges / blocks, verifies pass tokens, and feeds the
// outcome back at log time. A feature unit like h2o's handlers: ClientConnection calls these
// hooks and knows nothing else about risk.
#include <memory>

#include "proxy/server/phase_result.h"

namespace sluice {

class ClientConnection;
struct RouteConfig;
struct RiskExchangeState;  // per request, defined in risk_phase.cc

class RiskPhase {
 public:
  // Runs for every routed request that passed the limit phase. kAnswered when it responded
  // (challenge, block, verify endpoint); kContinue otherwise. Never yields today.
  static PhaseResult run(ClientConnection& conn, const RouteConfig& route);
  // After the response (log phase): behaviour feedback and access-log fields. Must not respond.
  static void log(ClientConnection& conn);
};

}  // namespace sluice
