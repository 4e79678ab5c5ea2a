#pragma once
// HeaderOrderFingerprint: a short, stable label for "how this client writes a request". Scripts
// that copy a browser's headers rarely copy their order and case, so the label separates them.
//
// Formula (sluice's own, version 1). Text form: `AAVVCRNN_HHHHHHHHHHHH_KKKKKKKKKKKK`
//   AA  method: its first two characters, lower-cased ("ge", "po", "he"; "x" pads a 1-char method)
//   VV  HTTP version: "10", "11", "20" (any other: "00")
//   C   'c' if a Cookie header is present, else 'n'
//   R   'r' if a Referer header is present, else 'n'
//   NN  number of headers other than Cookie and Referer, two decimal digits, capped at 99
//   H   12 hex digits: the top 48 bits of a chained hash64 over the header names other than
//       Cookie and Referer, in wire order, with their original case:
//         h = 0; for each name: h = hash64(name, h + 1)
//   K   12 hex digits: the same chained hash over the cookie names (the part before '=' of each
//       ';'-separated pair of every Cookie header, trimmed), sorted bytewise; "000000000000"
//       when there is no cookie. Values are never read, so a 1 MB cookie value costs nothing.
// `hash` is hash64 of the text form, for table keys and lists.
#include <cstdint>
#include <string>

#include "risk/risk_request.h"

namespace sluice::risk {

struct HeaderOrderFingerprint {
  std::string text;       // e.g. "ge11cr08_abcdef012345_0123456789ab"
  uint64_t hash = 0;      // hash64(text)
  uint64_t namesHash = 0; // the H part before truncation
  uint64_t cookieHash = 0;
  uint8_t headerCount = 0;  // the NN part (capped)

  static HeaderOrderFingerprint compute(const RiskRequest& request);
  static HeaderOrderFingerprint compute(std::string_view method, uint8_t httpMajor,
                                        uint8_t httpMinor,
                                        const std::vector<HeaderField>& headers);
};

// At most this many cookie names enter the K hash; the rest are ignored (bounded work).
constexpr size_t kMaxFingerprintCookies = 64;

}  // namespace sluice::risk
