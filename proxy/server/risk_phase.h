#pragma once
// The risk phase (docs/request-lifecycle.md): after the limit phase, before Lua access. Scores the
// request with risk/ (RiskEngine), answers challenges / blocks, verifies pass tokens, and feeds the
// outcome back at log time. A feature unit like h2o's handlers: ClientConnection calls these
// hooks and knows nothing else about risk.
//
// The RiskEngine's state tables (behaviour, spent tickets) are process-wide and outlive
// configuration generations: they live in this unit, created from the first config that enables
// risk, like the operator switches of controls.h. A reload swaps the RiskPolicy only.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "proxy/server/phase_result.h"

namespace sluice {

class ClientConnection;
class MetricsRegistry;
struct Config;
struct RouteConfig;
struct RiskExchangeState;  // per request, defined in risk_phase.cc
struct RiskSettings;
namespace risk {
struct RiskRequest;
class ListOverlay;
class RiskEngine;
}

class RiskPhase {
 public:
  // Before routing: requests under the reserved prefix (risk.endpoint_prefix, /.sluice) are the
  // proxy's own endpoints (/pow, /verify). kSuspended while their small body is read (then
  // requestComplete answers), kAnswered when answered at once, kContinue for everything else.
  static PhaseResult endpoint(ClientConnection& conn);
  // The whole request has arrived; true when this unit answered it (an endpoint request).
  static bool requestComplete(ClientConnection& conn);
  // Runs for every routed request that passed the limit phase. kAnswered when it responded
  // (challenge, block); kContinue otherwise. Never yields.
  static PhaseResult run(ClientConnection& conn, const RouteConfig& route);
  // After the response (log phase): behaviour feedback and access-log fields. Must not respond.
  static void log(ClientConnection& conn);

  // sluice.risk.add after this phase scored the request (access, aggregate): the points join
  // this request's score (sluice.risk.score, the access log's "risk_added") and raise the
  // entities' decaying scores, so their next request's ladder sees them. False when the request
  // was not scored (the caller keeps the points for risk.score alone).
  static bool addPoints(ClientConnection& conn, std::string_view signal, int points);
  // var.fingerprint: the request's header-order fingerprint text (docs/risk.md), computed once
  // per request: by this phase on routes with risk, else on first use.
  static std::string_view fingerprint(ClientConnection& conn);

  // Admin API: GET /risk/explain?ip=|device=|member= -> (status, JSON body).
  static std::pair<int, std::string> explain(const Config& cfg, std::string_view query);
  // Admin API: GET /risk -> JSON summary (profiles, levels, secret source, table use).
  static std::string statusJson(const Config& cfg);
  // The process-wide run-time list entries (admin API, cluster sync); null when risk is off.
  static risk::ListOverlay* listOverlay(const Config& cfg);
  // The process-wide engine (created on first use); null when risk is off.
  static risk::RiskEngine* engine(const Config& cfg);
  // Registers the sluice_risk_* families (ProxyMetrics' constructor).
  static void registerMetrics(MetricsRegistry& registry);

 private:
  // The RiskRequest view of the connection's request (wire-order headers, ids, TLS fingerprint
  // from trusted peers only; an untrusted peer's copy of that header is removed).
  static risk::RiskRequest& buildRequest(ClientConnection& c, const RiskSettings& s,
                                         uint8_t route_class, std::string_view profile);
};

}  // namespace sluice
