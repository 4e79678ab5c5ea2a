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
#include <cstring>
#include <string>
#include <string_view>

#include "risk/header_scan.h"
#include "risk/risk_request.h"

namespace sluice::risk {

// The 34-character text form, stored inline (no allocation per request). Reads like a
// string_view; str() makes a std::string.
struct FingerprintText {
  static constexpr size_t kSize = 34;
  char chars[kSize] = {};

  constexpr size_t size() const { return kSize; }
  const char* data() const { return chars; }
  const char* begin() const { return chars; }
  const char* end() const { return chars + kSize; }
  char operator[](size_t i) const { return chars[i]; }
  std::string_view view() const { return {chars, kSize}; }
  operator std::string_view() const { return view(); }
  std::string str() const { return std::string(chars, kSize); }
  std::string_view substr(size_t pos, size_t n = std::string_view::npos) const {
    return view().substr(pos, n);
  }
  friend bool operator==(const FingerprintText& a, const FingerprintText& b) {
    return std::memcmp(a.chars, b.chars, kSize) == 0;
  }
  friend bool operator==(const FingerprintText& a, std::string_view b) { return a.view() == b; }
};

struct HeaderOrderFingerprint {
  FingerprintText text;   // e.g. "ge11cr08_abcdef012345_0123456789ab"
  uint64_t hash = 0;      // hash64(text)
  uint64_t namesHash = 0; // the H part before truncation
  uint64_t cookieHash = 0;
  uint8_t headerCount = 0;  // the NN part (capped)

  static HeaderOrderFingerprint compute(const RiskRequest& request);
  static HeaderOrderFingerprint compute(std::string_view method, uint8_t httpMajor,
                                        uint8_t httpMinor,
                                        const std::vector<HeaderField>& headers);
  // The same, and the value of the cookie named `wantCookie` exactly as RiskEngine::findCookie
  // returns it (empty when absent), from one split of the Cookie headers.
  static HeaderOrderFingerprint compute(std::string_view method, uint8_t httpMajor,
                                        uint8_t httpMinor,
                                        const std::vector<HeaderField>& headers,
                                        std::string_view wantCookie,
                                        std::string_view* cookieValue);
  // From parts already computed for the request: the header scan (names hash and count, Cookie
  // and Referer presence) and the split cookies. What evaluate() uses: no header is read twice.
  static HeaderOrderFingerprint compose(std::string_view method, uint8_t httpMajor,
                                        uint8_t httpMinor, const HeaderScan& scan,
                                        const CookieJar& cookies);
};

// At most this many cookie names enter the K hash; the rest are ignored (bounded work).
constexpr size_t kMaxFingerprintCookies = 64;

}  // namespace sluice::risk
