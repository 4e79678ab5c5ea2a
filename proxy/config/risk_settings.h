#pragma once
// The `risk:` section as the proxy uses it: the validated, immutable RiskPolicy (risk/) plus the
// proxy-side wiring (where ids and fingerprints come from, how challenges are answered). Built by
// proxy/config/risk_section.cc; held by Config, so a request keeps the snapshot it started with.
#include <memory>
#include <string>

#include "risk/risk_config.h"

namespace sluice {

struct RiskSettings {
  risk::RiskPolicyPtr policy;
  // Where the master secret came from ("file /etc/sluice/risk.key" or "env SLUICE_RISK_SECRET"),
  // for GET /risk; never the secret itself.
  std::string secret_source;
  // Where the RiskRequest's ids come from (the same cookies the limiter keys on by default).
  std::string member_cookie = "member";
  std::string device_cookie = "device";
  std::string device_header = "X-Device-Id";      // the storefront SDK's header; "" = none
  std::string address_header = "X-Address-Hash";  // shipping-address hash; "" = none
  // TLS fingerprint (JA4/JA3 text) written by the TLS terminator. Honoured only when the direct
  // peer is in trusted_proxies; stripped from requests of anyone else. "" = none.
  std::string tls_fingerprint_header;
  // Challenges: API/XHR callers get JSON with this status (403 or 429); browser navigations get
  // the proof-of-work page, or for external levels a 302 to challenge_url (with ?return= and
  // &ticket=), or the JSON when no challenge_url is set.
  int challenge_status = 403;
  std::string challenge_url;
  // Reserved path prefix the proxy answers itself on its listeners (pow, verify).
  std::string endpoint_prefix = "/.sluice";
  // Behaviour/spent-table sizes the process-wide engine was (or will be) created with.
  size_t behaviour_memory = size_t{16} << 20;
  size_t spent_memory = size_t{4} << 20;
};

}  // namespace sluice
