#include "risk/header_order_fingerprint.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "core/hash.h"
#include "core/strings.h"

namespace sluice::risk {
namespace {

uint64_t chain(uint64_t h, std::string_view name) { return hash64(name, h + 1); }

void putHex48(char* out, uint64_t v) {
  static const char kHex[] = "0123456789abcdef";
  v >>= 16;  // top 48 bits
  for (int i = 11; i >= 0; --i) {
    out[i] = kHex[v & 15];
    v >>= 4;
  }
}

}  // namespace

HeaderOrderFingerprint HeaderOrderFingerprint::compute(const RiskRequest& r) {
  return compute(r.method, r.httpMajor, r.httpMinor, r.headers);
}

HeaderOrderFingerprint HeaderOrderFingerprint::compute(std::string_view method, uint8_t major,
                                                       uint8_t minor,
                                                       const std::vector<HeaderField>& headers) {
  return compute(method, major, minor, headers, {}, nullptr);
}

HeaderOrderFingerprint HeaderOrderFingerprint::compute(std::string_view method, uint8_t major,
                                                       uint8_t minor,
                                                       const std::vector<HeaderField>& headers,
                                                       std::string_view wantCookie,
                                                       std::string_view* cookieValue) {
  CookieJar jar;
  jar.split(headers);
  if (cookieValue) *cookieValue = wantCookie.empty() ? std::string_view{} : jar.find(wantCookie);
  return compose(method, major, minor, HeaderScan::of(headers), jar);
}

HeaderOrderFingerprint HeaderOrderFingerprint::compose(std::string_view method, uint8_t major,
                                                       uint8_t minor, const HeaderScan& scan,
                                                       const CookieJar& jar) {
  HeaderOrderFingerprint fp;
  const bool cookie = scan.has(HeaderId::kCookie);
  const bool referer = scan.has(HeaderId::kReferer);
  const uint64_t names = scan.namesHash;
  const unsigned count = scan.otherCount;
  // The K hash: the first kMaxFingerprintCookies non-empty names (trimmed), sorted.
  std::array<std::string_view, kMaxFingerprintCookies> cookies;
  size_t ncookies = 0;
  for (const CookiePair& p : jar.pairs()) {
    const std::string_view n = trim(p.name);
    if (n.empty()) continue;
    cookies[ncookies++] = n;
    if (ncookies == cookies.size()) break;
  }
  std::sort(cookies.begin(), cookies.begin() + static_cast<long>(ncookies));
  uint64_t cookieHash = 0;
  for (size_t i = 0; i < ncookies; ++i) cookieHash = chain(cookieHash, cookies[i]);

  fp.namesHash = names;
  fp.cookieHash = cookieHash;
  fp.headerCount = static_cast<uint8_t>(std::min(count, 99u));
  char* buf = fp.text.chars;
  buf[0] = method.size() > 0 ? asciiLower(method[0]) : 'x';
  buf[1] = method.size() > 1 ? asciiLower(method[1]) : 'x';
  // Method bytes are the client's: keep the label printable whatever they sent.
  for (int i = 0; i < 2; ++i)
    if (static_cast<unsigned char>(buf[i]) < 0x21 || static_cast<unsigned char>(buf[i]) > 0x7e ||
        buf[i] == '_')
      buf[i] = 'x';
  const char* v = "00";
  if (major == 1 && minor == 0) v = "10";
  if (major == 1 && minor == 1) v = "11";
  if (major == 2 && minor == 0) v = "20";
  buf[2] = v[0];
  buf[3] = v[1];
  buf[4] = cookie ? 'c' : 'n';
  buf[5] = referer ? 'r' : 'n';
  buf[6] = static_cast<char>('0' + fp.headerCount / 10);
  buf[7] = static_cast<char>('0' + fp.headerCount % 10);
  buf[8] = '_';
  putHex48(buf + 9, names);
  buf[21] = '_';
  if (ncookies == 0) {
    std::fill(buf + 22, buf + FingerprintText::kSize, '0');
  } else {
    putHex48(buf + 22, cookieHash);
  }
  fp.hash = hash64(fp.text.view());
  return fp;
}

}  // namespace sluice::risk
