#pragma once
// The risk phase's one pass over a request's headers (RiskPhase::buildRequest): the headers
// risk/ sees, the TLS fingerprint, the device and address headers and the Cookie headers' split.
// Split out of risk_phase.cc so the pass can be held to its plain definition in unit tests.
#include <cstdint>
#include <string_view>

#include "proxy/http/header_map.h"
#include "risk/risk_request.h"

namespace sluice {

// A one-word filter over header names: adding a name sets bit ((first byte | 0x20) + 9 * length)
// mod 64. Names equal ASCII case-insensitively have the same length and the same folded first
// byte, so they set the same bit: a name whose bit is clear is none of the names added. A set bit
// may be a collision and needs the full compare. The empty name is never added and never
// matches (the pass's matchers match no empty name).
class HeaderNameFilter {
 public:
  static constexpr unsigned key(unsigned char first, size_t length) {
    return ((first | 0x20u) + 9u * static_cast<unsigned>(length)) & 63;
  }
  static constexpr uint64_t bit(std::string_view name) {
    return uint64_t{1} << key(static_cast<unsigned char>(name[0]), name.size());
  }
  static constexpr uint64_t bits(std::string_view name) { return name.empty() ? 0 : bit(name); }

  constexpr explicit HeaderNameFilter(uint64_t bits = 0) : bits_(bits) {}
  constexpr void add(std::string_view name) { bits_ |= bits(name); }
  constexpr bool mayContain(std::string_view name) const {
    return !name.empty() && (bits_ & bit(name)) != 0;
  }
  // The same test from a name's first byte and length, without the empty check: for an empty
  // name `first` may be any byte and the answer may be a false positive.
  constexpr bool mayContain(unsigned char first, size_t length) const {
    return (bits_ >> key(first, length)) & 1;
  }

 private:
  uint64_t bits_;
};

// Headers a trusted hop adds (X-Forwarded-For, -Proto, -Host, X-Real-IP, Forwarded, Via): not the
// client's, so not part of its header-order fingerprint.
bool isHopHeader(std::string_view name);

// RiskPhase::endpoint's quick answer: true when the request target's path cannot start with
// `prefix` + '/', decided without splitting the target. Only origin-form targets ('/' first) are
// decided: their path is a prefix of the target, so a target without `prefix` + '/' in front has
// no such path. Anything else (absolute-form, a target that does start so) returns false and is
// split.
inline bool targetOutsidePrefix(std::string_view target, std::string_view prefix) {
  if (target.empty() || target.front() != '/') return false;
  return target.size() <= prefix.size() || target.compare(0, prefix.size(), prefix) != 0 ||
         target[prefix.size()] != '/';
}

// The configured names the pass looks for; an empty name looks for nothing.
struct RiskHeaderNames {
  std::string_view tls_fingerprint;
  std::string_view device;
  std::string_view address;
};

// One pass over `headers` (skipping removed fields) into `r`: r->headers (wire order; without the
// TLS fingerprint header, and for a trusted peer without the hop headers), r->tlsFingerprint (the
// first TLS fingerprint header's value, trusted peers only: an untrusted peer's copies are
// removed from `headers`, never forwarded), r->addressHash (first address header among the
// headers risk/ sees) and r->cookies (split from every Cookie header among them). Returns the
// first device header's value among them (empty when none). Other fields of `r` are untouched.
std::string_view collectRiskHeaders(HeaderMap& headers, const RiskHeaderNames& names,
                                    bool trusted_peer, risk::RiskRequest* r);

}  // namespace sluice
