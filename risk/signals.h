#pragma once
// The built-in risk signals: each has a stable name (config keys, access log, explain output) and
// a default weight in points. Weights are anomaly-scoring style: a request's score is the sum of
// its signals' points plus matching rules, clamped to 0..100. The defaults are set so that one
// weak signal alone stays below the usual first challenge threshold (30), two agreeing signals
// reach it, and only hard evidence (a list hit, a headless browser on checkout) reaches block.
#include <cstdint>
#include <string_view>

namespace sluice::risk {

enum class Signal : uint8_t {
  kUaMissing,
  kUaAutomation,
  kUaHeadless,
  kUaHintsMismatch,
  kUaHintsMissing,
  kUaHintsGarbage,
  kUaHeaderOrderMismatch,
  kFingerprintListed,
  kTlsListed,
  kGeoRiskyCountry,
  kGeoRiskyAsn,
  kIpHosting,
  kIpVpn,
  kIpPublicProxy,
  kIpResidentialProxy,
  kIpTor,
  kListIp,
  kListMember,
  kListDevice,
  kListAddress,
  kBehRateHigh,
  kBehRegularTiming,
  kBehCheckoutWithoutView,
  kBehApiWithoutPage,
  kBehMembersPerDevice,
  kBehMembersPerIp,
  kBehDevicesPerMember,
  kBehAddressesPerMember,
  kBehChallengeFailures,
  kTokenIpChanged,
  kTokenInvalid,
  kCount
};
constexpr int kSignalCount = static_cast<int>(Signal::kCount);
static_assert(kSignalCount <= 64, "fired signals are a 64-bit mask");

struct SignalInfo {
  std::string_view name;
  int defaultPoints;
  std::string_view meaning;
};

const SignalInfo& signalInfo(Signal s);
inline std::string_view signalName(Signal s) { return signalInfo(s).name; }
bool signalByName(std::string_view name, Signal* out);

}  // namespace sluice::risk
