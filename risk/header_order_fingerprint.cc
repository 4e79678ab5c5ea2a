#include "risk/header_order_fingerprint.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "core/hash.h"
#include "core/strings.h"
#include "core/uninit_array.h"

namespace sluice::risk {
namespace {

uint64_t chain(uint64_t h, std::string_view name) { return hash64(name, h + 1); }

// The 8 lower-case hex digits of v, first digit in the lowest byte (ready to store): the nibbles
// are spread one per byte, then each becomes '0'+n or 'a'+n-10 with no table or loop.
inline uint64_t hex8(uint32_t v) {
  uint64_t x = v;
  x = ((x & 0xffff0000ULL) << 16) | (x & 0xffffULL);
  x = ((x & 0x0000ff000000ff00ULL) << 8) | (x & 0x000000ff000000ffULL);
  x = ((x & 0x00f000f000f000f0ULL) << 4) | (x & 0x000f000f000f000fULL);
  // Bytes now hold one nibble each, least significant first; bytes >= 10 get 'a' - '0' - 10 more.
  const uint64_t letters = ((x + 0x0606060606060606ULL) >> 4) & 0x0101010101010101ULL;
  x += 0x3030303030303030ULL + letters * ('a' - '0' - 10);
  return __builtin_bswap64(x);  // most significant digit first in memory (little-endian)
}

// The top 48 bits of v as 12 lower-case hex digits.
void putHex48(char* out, uint64_t v) {
  v >>= 16;
  const uint64_t hi = hex8(static_cast<uint32_t>(v >> 32));  // "0000" + 4 digits
  const uint64_t lo = hex8(static_cast<uint32_t>(v));
  std::memcpy(out, reinterpret_cast<const char*>(&hi) + 4, 4);
  std::memcpy(out + 4, &lo, 8);
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
  // Uninitialised: zeroing 64 views cost more than the sort of a request's few names.
  UninitArray<std::string_view, kMaxFingerprintCookies> cookies;
  size_t ncookies = 0;
  for (const CookiePair& p : jar.pairs()) {
    const std::string_view n = trim(p.name);
    if (n.empty()) continue;
    cookies[ncookies++] = n;
    if (ncookies == kMaxFingerprintCookies) break;
  }
  std::sort(cookies.data(), cookies.data() + ncookies);
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
