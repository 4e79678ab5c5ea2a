// The small parsers config values and headers go through (core/strings.h, core/ip.h): durations,
// sizes, IP addresses, CIDRs, plus the string helpers the access log and headers use. Each is
// checked against a property, not only for crashes: exact integer arithmetic for durations and
// sizes, print/parse round trips for addresses, a CIDR containing its own base.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>
#include <string>

#include "core/ip.h"
#include "core/strings.h"
#include "proxy/server/identify.h"
#include "tests/fuzz/fuzz_common.h"

namespace sluice {
namespace {

// Splits "<digits><unit>" (after trim); false for any other shape (fractions included).
bool digitsAndUnit(std::string_view s, std::string_view* digits, std::string_view* unit) {
  s = trim(s);
  size_t i = 0;
  while (i < s.size() && s[i] >= '0' && s[i] <= '9') i++;
  if (i == 0) return false;
  *digits = s.substr(0, i);
  *unit = s.substr(i);
  return unit->find_first_of(".0123456789") == std::string_view::npos;
}

// digits * mult computed exactly; false when it exceeds max.
bool exactValue(std::string_view digits, unsigned __int128 mult, unsigned __int128 max,
                unsigned __int128* out) {
  unsigned __int128 v = 0;
  for (char c : digits) {
    v = v * 10 + static_cast<unsigned>(c - '0');
    if (v > max) return false;
  }
  v *= mult;
  if (v > max) return false;
  *out = v;
  return true;
}

void checkDuration(std::string_view s) {
  int64_t ns = -1;
  bool ok = parseDurationNanos(s, &ns);
  if (ok) FUZZ_CHECK(ns >= 0);
  std::string_view digits, unit;
  if (!digitsAndUnit(s, &digits, &unit)) return;
  static const struct {
    std::string_view unit;
    unsigned __int128 mult;
  } kUnits[] = {{"ns", 1},         {"us", 1000},         {"ms", 1000000},
                {"s", 1000000000}, {"m", 60000000000ull}, {"h", 3600000000000ull}};
  for (const auto& u : kUnits) {
    if (unit != u.unit) continue;
    unsigned __int128 want;
    if (exactValue(digits, u.mult, INT64_MAX, &want)) {
      FUZZ_CHECK(ok && static_cast<unsigned __int128>(ns) == want);
    } else {
      FUZZ_CHECK(!ok);  // too long a duration is refused, never wrapped
    }
    return;
  }
  FUZZ_CHECK(!ok);  // a bare number or an unknown unit
}

void checkSize(std::string_view s) {
  uint64_t v = 0;
  bool ok = parseSize(s, &v);
  std::string_view digits, unit;
  if (!digitsAndUnit(s, &digits, &unit)) return;
  static const struct {
    std::string_view unit;
    unsigned __int128 mult;
  } kUnits[] = {{"", 1},           {"b", 1},          {"B", 1},
                {"k", 1 << 10},    {"K", 1 << 10},    {"kb", 1 << 10},    {"KB", 1 << 10},
                {"m", 1 << 20},    {"M", 1 << 20},    {"mb", 1 << 20},    {"MB", 1 << 20},
                {"g", 1 << 30},    {"G", 1 << 30},    {"gb", 1 << 30},    {"GB", 1 << 30}};
  for (const auto& u : kUnits) {
    if (unit != u.unit) continue;
    unsigned __int128 want;
    if (exactValue(digits, u.mult, UINT64_MAX, &want)) {
      FUZZ_CHECK(ok && v == want);
    } else {
      FUZZ_CHECK(!ok);
    }
    return;
  }
  FUZZ_CHECK(!ok);
}

void checkIp(std::string_view s) {
  IpAddress ip;
  if (!IpAddress::parse(s, &ip)) return;
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  FUZZ_CHECK(ip.v4 == (memcmp(ip.bytes.data(), kMapped, 12) == 0));
  std::string text = ip.toString();
  FUZZ_CHECK(!text.empty() && text.size() < INET6_ADDRSTRLEN);
  IpAddress again;
  FUZZ_CHECK(IpAddress::parse(text, &again));
  FUZZ_CHECK(again == ip && again.v4 == ip.v4);
  // Through a sockaddr, as an accepted connection's peer would arrive.
  sockaddr_storage ss{};
  if (ip.v4) {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    memcpy(&s4->sin_addr, &ip.bytes[12], 4);
    s4->sin_port = htons(8080);
  } else {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    memcpy(&s6->sin6_addr, ip.bytes.data(), 16);
    s6->sin6_port = htons(8080);
  }
  IpAddress from;
  uint16_t port = 0;
  FUZZ_CHECK(IpAddress::fromSockaddr(reinterpret_cast<sockaddr*>(&ss), &from, &port));
  FUZZ_CHECK(from == ip && port == 8080);
}

void checkCidr(std::string_view s) {
  Cidr c;
  if (!Cidr::parse(s, &c)) return;
  FUZZ_CHECK(c.prefix >= 0 && c.prefix <= 128);
  if (s.substr(0, s.find('/')).find(':') == std::string_view::npos) FUZZ_CHECK(c.prefix >= 96);
  FUZZ_CHECK(c.contains(c.base));
  // The address it was written with is inside it.
  IpAddress written;
  FUZZ_CHECK(IpAddress::parse(s.substr(0, s.find('/')), &written));
  FUZZ_CHECK(c.contains(written));
  // Flipping the last bit of the prefix leaves it (when there is a prefix at all).
  if (c.prefix > 0) {
    IpAddress other = c.base;
    int bit = c.prefix - 1;
    other.bytes[bit / 8] ^= static_cast<uint8_t>(0x80 >> (bit % 8));
    FUZZ_CHECK(!c.contains(other));
  }
}

void checkStrings(std::string_view s) {
  std::string_view t = trim(s);
  FUZZ_CHECK(t.size() <= s.size());
  if (!t.empty()) FUZZ_CHECK(t.front() != ' ' && t.front() != '\t' && t.back() != ' ' && t.back() != '\t');
  FUZZ_CHECK(equalsIgnoreCase(s, toLower(s)));
  std::string j = jsonEscape(s);
  for (unsigned char c : j) FUZZ_CHECK(c >= 0x20 && c != 0x7f);
  (void)headerHasToken(s, "close");
  (void)headerHasToken(s, "");
  if (isValidRequestId(s)) FUZZ_CHECK(!s.empty() && s.size() <= 128);
  if (isValidTraceparent(s)) FUZZ_CHECK(s.size() >= 55 && s[2] == '-');
}

}  // namespace
}  // namespace sluice

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  if (size > 4096) return -1;
  std::string_view s(reinterpret_cast<const char*>(data), size);
  checkDuration(s);
  checkSize(s);
  checkIp(s);
  checkCidr(s);
  checkStrings(s);
  return 0;
}
