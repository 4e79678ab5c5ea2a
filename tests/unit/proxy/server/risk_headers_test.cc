#include "proxy/server/risk_headers.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "core/strings.h"
#include "proxy/http/header_map.h"
#include "proxy/router/router.h"
#include "risk/risk_request.h"

namespace sluice {
namespace {

// The pass as it was written before the name filter: every name through every matcher.
struct PlainResult {
  std::vector<risk::HeaderField> headers;
  std::string_view tls, address, device;
  std::vector<risk::CookiePair> cookies;
  std::vector<bool> removed;
};

bool plainHop(std::string_view n) {
  for (const char* h : {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip",
                        "forwarded", "via"})
    if (equalsIgnoreCase(n, h)) return true;
  return false;
}

PlainResult plainPass(HeaderMap& h, const RiskHeaderNames& names, bool trusted) {
  PlainResult p;
  risk::CookieJar jar;
  jar.startSplit();
  bool device_seen = false, address_seen = false;
  auto is = [](std::string_view n, std::string_view want) {
    return !want.empty() && equalsIgnoreCase(n, want);
  };
  for (size_t i = 0; i < h.size(); i++) {
    if (h.removed(i)) continue;
    const std::string_view name = h.name(i), value = h.value(i);
    if (is(name, names.tls_fingerprint)) {
      if (trusted) {
        if (p.tls.empty()) p.tls = value;
      } else {
        h.remove(i);
      }
      continue;
    }
    if (trusted && plainHop(name)) continue;
    p.headers.emplace_back(name, value);
    if (equalsIgnoreCase(name, "cookie")) jar.addCookieHeader(value);
    if (!device_seen && is(name, names.device)) {
      device_seen = true;
      p.device = value;
    }
    if (!address_seen && is(name, names.address)) {
      address_seen = true;
      p.address = value;
    }
  }
  p.cookies = jar.pairs();
  for (size_t i = 0; i < h.size(); i++) p.removed.push_back(h.removed(i));
  return p;
}

TEST_CASE("HeaderNameFilter never rules out a name equal to one added, in any case",
          "[proxy][risk]") {
  uint64_t seed = 3;
  auto next = [&] { return seed = seed * 6364136223846793005ULL + 1442695040888963407ULL; };
  const char pool[] = "aAzZxX-_09@`[{\x7f\xc1\xe1";
  for (int round = 0; round < 20000; round++) {
    std::string name;
    const size_t len = 1 + (next() >> 33) % 40;
    for (size_t i = 0; i < len; i++) name.push_back(pool[(next() >> 33) % (sizeof pool - 1)]);
    std::string other = name;
    for (char& c : other)
      if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z' && (next() >> 33) % 2) c ^= 0x20;
    HeaderNameFilter f;
    f.add(name);
    REQUIRE(f.mayContain(other));
    REQUIRE(f.mayContain(name));
  }
  HeaderNameFilter f;
  f.add("");
  CHECK_FALSE(f.mayContain(""));
  CHECK_FALSE(f.mayContain("a"));
  f.add("Cookie");
  CHECK(f.mayContain("COOKIE"));
  CHECK_FALSE(f.mayContain("Cookies"));
  CHECK_FALSE(f.mayContain(""));
}

TEST_CASE("collectRiskHeaders keeps, drops and picks the same headers as the plain pass",
          "[proxy][risk]") {
  // Names the pass acts on, in mixed case, beside names that share their filter bit
  // (X-Requested-With and X-Forwarded-Host; Dnt) and ordinary browser headers.
  const std::vector<std::string> pool = {
      "Cookie", "cookie", "COOKIE", "Cookies", "X-Forwarded-For", "x-forwarded-proto",
      "X-Forwarded-Host", "X-Real-IP", "Forwarded", "Via", "VIA", "Vi", "X-Requested-With", "Dnt",
      "X-TLS-Fingerprint", "x-tls-fingerprint", "X-Device-Id", "x-device-id", "X-Address-Hash",
      "X-Address-Hasx", "", "Host", "User-Agent", "Accept", "Accept-Language", "Sec-Fetch-Site",
      "sec-ch-ua", "Referer", "X", "@ookie", "`ookie", "Z-Device-Id"};
  const std::vector<RiskHeaderNames> configs = {
      {"X-TLS-Fingerprint", "X-Device-Id", "X-Address-Hash"},
      {"", "X-Device-Id", "X-Address-Hash"},
      {"x-tls-fingerprint", "", ""},
      {"Cookie", "Via", "X-Forwarded-For"},  // configured names that are also Cookie or hop headers
      {"", "", ""}};
  uint64_t seed = 7;
  auto next = [&] { return seed = seed * 6364136223846793005ULL + 1442695040888963407ULL; };
  risk::RiskRequest r;  // reused, as the per-thread request is
  for (int round = 0; round < 5000; round++) {
    HeaderMap a, b;
    const size_t n = (next() >> 33) % 24;
    for (size_t i = 0; i < n; i++) {
      const std::string& name = pool[(next() >> 33) % pool.size()];
      const std::string value = ((next() >> 33) % 3 == 0) ? "a=1; b=" + std::to_string(i) + " ;c"
                                                  : "v" + std::to_string((next() >> 33) % 100);
      a.add(name, value);
      b.add(name, value);
      if ((next() >> 33) % 10 == 0) {
        a.remove(i);
        b.remove(i);
      }
    }
    const RiskHeaderNames& names = configs[(next() >> 33) % configs.size()];
    const bool trusted = (next() >> 33) % 2;
    const PlainResult want = plainPass(a, names, trusted);
    r.addressHash = "stale";
    r.tlsFingerprint = "stale";
    const std::string_view device = collectRiskHeaders(b, names, trusted, &r);
    REQUIRE(r.headers == want.headers);
    REQUIRE(r.tlsFingerprint == want.tls);
    REQUIRE(r.addressHash == want.address);
    REQUIRE(device == want.device);
    REQUIRE(r.cookies.isSplit());
    REQUIRE(r.cookies.pairs().size() == want.cookies.size());
    for (size_t i = 0; i < want.cookies.size(); i++) {
      REQUIRE(r.cookies.pairs()[i].text == want.cookies[i].text);
      REQUIRE(r.cookies.pairs()[i].name == want.cookies[i].name);
    }
    for (size_t i = 0; i < b.size(); i++) REQUIRE(b.removed(i) == want.removed[i]);
  }
}

TEST_CASE("targetOutsidePrefix says yes only when the split path is outside prefix + '/'",
          "[proxy][risk]") {
  // RiskPhase::endpoint's rule on the split path, against the quick answer on the whole target.
  auto endpointPath = [](std::string_view target, std::string_view prefix) {
    std::string_view path, query;
    splitTarget(target, &path, &query);
    return path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0 &&
           path[prefix.size()] == '/';
  };
  const std::string pieces[] = {"/", "/", ".sluice", ".sluic", "pow", "?", "?", "x", "http://h",
                                "https://a.b", "#", "/.sluice", "/.sluice/", "=", "%2F", "S"};
  const std::string prefixes[] = {"/.sluice", "/.s", "/", "", "/.sluice/pow"};
  uint64_t seed = 5;
  auto next = [&] { return (seed = seed * 6364136223846793005ULL + 1442695040888963407ULL) >> 33; };
  for (int round = 0; round < 50000; round++) {
    std::string target;
    const size_t k = next() % 6;
    for (size_t i = 0; i < k; i++) target += pieces[next() % std::size(pieces)];
    const std::string& prefix = prefixes[next() % std::size(prefixes)];
    INFO(target << " prefix " << prefix);
    // Never a wrong "outside"; and for origin-form targets always the full answer.
    if (targetOutsidePrefix(target, prefix)) REQUIRE_FALSE(endpointPath(target, prefix));
    if (!target.empty() && target[0] == '/')
      REQUIRE(targetOutsidePrefix(target, prefix) == !endpointPath(target, prefix));
  }
  CHECK(targetOutsidePrefix("/api/items/1", "/.sluice"));
  CHECK_FALSE(targetOutsidePrefix("/.sluice/pow?x=1", "/.sluice"));
  CHECK(targetOutsidePrefix("/.sluice?/pow", "/.sluice"));
  CHECK_FALSE(targetOutsidePrefix("http://h/.sluice/pow", "/.sluice"));  // absolute-form: split
}

}  // namespace
}  // namespace sluice
