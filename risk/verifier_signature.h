#pragma once
// Server-to-server "challenge passed" reports from external verifiers (SMS, slider, face
// providers run by the storefront). The verifier signs a canonical string with a shared secret;
// the proxy checks the signature in constant time, the timestamp against a maximum skew, and
// (with a SpentSet) that the ticket is used once.
//
// Canonical string, version 1 (fields joined by '\n', no trailing newline):
//   "sluice-verify-v1" \n <timestamp: Unix seconds, decimal> \n <ticket> \n <level name> \n
//   <subject> \n <result: "pass" | "fail">
// Signature: lowercase hex HMAC-SHA256(verifier secret, canonical string), sent as
// "v1=<64 hex>". Fields may not contain '\n' (such a report is malformed).
#include <cstdint>
#include <string>
#include <string_view>

#include "risk/crypto.h"

namespace sluice::risk {

struct VerifierReport {
  int64_t timestamp = 0;
  std::string_view ticket;
  std::string_view level;
  std::string_view subject;
  bool passed = true;
};

enum class VerifierStatus : uint8_t { kOk, kMalformed, kBadSignature, kStale };
const char* verifierStatusName(VerifierStatus s);

std::string verifierCanonicalString(const VerifierReport& report);
// "v1=<hex>": what a verifier sends (and what tests and the docs' example compute).
std::string signVerifierReport(const HmacSha256& key, const VerifierReport& report);
VerifierStatus checkVerifierReport(const HmacSha256& key, const VerifierReport& report,
                                   std::string_view signature, int64_t nowUnix,
                                   int64_t maxSkewSeconds);

}  // namespace sluice::risk
