#include "risk/signals.h"

namespace sluice::risk {
namespace {

// Indexed by Signal. docs/risk.md mirrors this table.
constexpr SignalInfo kSignals[kSignalCount] = {
    {"ua.missing", 30, "no User-Agent"},
    {"ua.automation", 40, "HTTP library or automation tool User-Agent"},
    {"ua.headless", 60, "headless browser or browser-automation driver"},
    {"ua.hints_mismatch", 30, "Sec-CH-UA brand/version/mobile/platform disagrees with the UA"},
    {"ua.hints_missing", 15, "a Chromium UA recent enough to send Sec-CH-UA sent none"},
    {"ua.hints_garbage", 25, "unparseable Sec-CH-UA* value"},
    {"ua.header_order_mismatch", 30, "header order or case unlike the claimed browser"},
    {"fingerprint.listed", 50, "header-order fingerprint on a fingerprint list"},
    {"tls.listed", 50, "TLS fingerprint on a tls list"},
    {"geo.risky_country", 10, "country on the risky-country list"},
    {"geo.risky_asn", 25, "ASN on the risky-ASN list"},
    {"ip.hosting", 20, "hosting/data-centre address"},
    {"ip.vpn", 15, "anonymous VPN exit"},
    {"ip.public_proxy", 25, "public proxy"},
    {"ip.residential_proxy", 20, "residential proxy network"},
    {"ip.tor", 35, "Tor exit node"},
    {"list.ip", 100, "client IP on a scalper list (points from the list)"},
    {"list.member", 100, "member on a scalper list (points from the list)"},
    {"list.device", 100, "device on a scalper list (points from the list)"},
    {"list.address", 100, "shipping address on a scalper list (points from the list)"},
    {"behaviour.rate_high", 20, "more requests per window than a person makes"},
    {"behaviour.regular_timing", 30, "inter-arrival gaps too regular to be human"},
    {"behaviour.checkout_without_view", 35, "checkout without viewing the item recently"},
    {"behaviour.api_without_page", 15, "API calls with no page view"},
    {"behaviour.members_per_device", 30, "many members on one device"},
    {"behaviour.members_per_ip", 10, "many members from one IP"},
    {"behaviour.devices_per_member", 20, "one member on many devices"},
    {"behaviour.addresses_per_member", 25, "one member shipping to many addresses"},
    {"behaviour.challenge_failures", 20, "recent failed challenges"},
    {"token.ip_changed", 5, "valid pass token used from another /24 or /64"},
    {"token.invalid", 20, "forged, garbage or foreign pass token presented"},
};

}  // namespace

const SignalInfo& signalInfo(Signal s) { return kSignals[static_cast<int>(s)]; }

bool signalByName(std::string_view name, Signal* out) {
  for (int i = 0; i < kSignalCount; ++i) {
    if (kSignals[i].name == name) {
      *out = static_cast<Signal>(i);
      return true;
    }
  }
  return false;
}

}  // namespace sluice::risk
