#include "risk/verifier_signature.h"

namespace sluice::risk {

const char* verifierStatusName(VerifierStatus s) {
  switch (s) {
    case VerifierStatus::kOk: return "ok";
    case VerifierStatus::kMalformed: return "malformed";
    case VerifierStatus::kBadSignature: return "bad_signature";
    case VerifierStatus::kStale: return "stale";
  }
  return "malformed";
}

std::string verifierCanonicalString(const VerifierReport& r) {
  std::string s = "sluice-verify-v1\n";
  s += std::to_string(r.timestamp);
  s += '\n';
  s += r.ticket;
  s += '\n';
  s += r.level;
  s += '\n';
  s += r.subject;
  s += '\n';
  s += r.passed ? "pass" : "fail";
  return s;
}

std::string signVerifierReport(const HmacSha256& key, const VerifierReport& r) {
  const Sha256Digest d = key.mac(verifierCanonicalString(r));
  return "v1=" + hexEncode(d.data(), d.size());
}

VerifierStatus checkVerifierReport(const HmacSha256& key, const VerifierReport& r,
                                   std::string_view signature, int64_t now, int64_t maxSkew) {
  for (std::string_view f : {r.ticket, r.level, r.subject})
    if (f.find('\n') != std::string_view::npos || f.size() > 1024) return VerifierStatus::kMalformed;
  if (r.ticket.empty() || r.level.empty()) return VerifierStatus::kMalformed;
  if (signature.substr(0, 3) != "v1=") return VerifierStatus::kMalformed;
  uint8_t given[32];
  if (!hexDecode(signature.substr(3), given, sizeof given)) return VerifierStatus::kMalformed;
  // The signature first: an unsigned report learns nothing, not even whether it is stale.
  const Sha256Digest want = key.mac(verifierCanonicalString(r));
  if (!constantTimeEqual(want.data(), given, sizeof given)) return VerifierStatus::kBadSignature;
  const __int128 skew = static_cast<__int128>(r.timestamp) - now;
  if (skew > maxSkew || skew < -static_cast<__int128>(maxSkew)) return VerifierStatus::kStale;
  return VerifierStatus::kOk;
}

}  // namespace sluice::risk
