#include "risk/header_order_fingerprint.h"

#include <catch2/catch.hpp>
#include <random>
#include <regex>

#include "core/hash.h"
#include "core/strings.h"
#include "risk/risk_engine.h"
#include "tests/unit/risk/risk_test_util.h"

namespace sluice::risk {
namespace {

using testing::chromeNavigation;
using testing::toLowerCopy;

std::string_view RiskEngineCookie(const RiskRequest& r, std::string_view name) {
  return RiskEngine::findCookie(r, name);
}

TEST_CASE("fingerprint text has the documented shape", "[risk][fingerprint]") {
  auto fp = HeaderOrderFingerprint::compute("GET", 1, 1, chromeNavigation());
  CHECK(std::regex_match(fp.text.str(), std::regex("ge11cn14_[0-9a-f]{12}_[0-9a-f]{12}")));
  CHECK(fp.headerCount == 14);
  CHECK(fp.hash == hash64(fp.text));
}

TEST_CASE("fingerprint prefix: method, version, cookie, referer, count", "[risk][fingerprint]") {
  std::vector<HeaderField> h = {{"Host", "a"}, {"Referer", "https://a/"}, {"Accept", "*/*"}};
  CHECK(HeaderOrderFingerprint::compute("POST", 1, 0, h).text.substr(0, 9) == "po10nr02_");
  CHECK(HeaderOrderFingerprint::compute("GET", 2, 0, h).text.substr(0, 9) == "ge20nr02_");
  CHECK(HeaderOrderFingerprint::compute("GET", 3, 0, h).text.substr(0, 9) == "ge00nr02_");
  CHECK(HeaderOrderFingerprint::compute("D", 1, 1, h).text.substr(0, 2) == "dx");
  CHECK(HeaderOrderFingerprint::compute("", 1, 1, {}).text == "xx11nn00_000000000000_000000000000");
  // No cookie: the K part is all zeros.
  CHECK(HeaderOrderFingerprint::compute("GET", 1, 1, h).text.substr(22) == "000000000000");
}

TEST_CASE("fingerprint header count caps at 99", "[risk][fingerprint]") {
  std::vector<std::string> names;
  for (int i = 0; i < 150; ++i) names.push_back("X-H" + std::to_string(i));
  std::vector<HeaderField> h;
  for (auto& n : names) h.push_back({n, "v"});
  auto fp = HeaderOrderFingerprint::compute("GET", 1, 1, h);
  CHECK(fp.text.substr(6, 2) == "99");
  CHECK(fp.headerCount == 99);
}

TEST_CASE("fingerprint depends on order and case, not values", "[risk][fingerprint]") {
  auto base = HeaderOrderFingerprint::compute("GET", 1, 1, chromeNavigation());
  auto reordered = chromeNavigation();
  std::swap(reordered[1], reordered[2]);
  CHECK(HeaderOrderFingerprint::compute("GET", 1, 1, reordered).namesHash != base.namesHash);
  auto recased = chromeNavigation();
  recased[2].first = "Sec-Ch-Ua";
  CHECK(HeaderOrderFingerprint::compute("GET", 1, 1, recased).namesHash != base.namesHash);
  auto revalued = chromeNavigation();
  revalued[0].second = "other.example";
  CHECK(HeaderOrderFingerprint::compute("GET", 1, 1, revalued).text == base.text);
}

TEST_CASE("fingerprint cookie part: names sorted, values ignored", "[risk][fingerprint]") {
  std::vector<HeaderField> a = {{"Host", "x"}, {"Cookie", "b=1; a=2"}};
  const std::string bigCookie = "a=zzz;b=" + std::string(100000, 'q');
  std::vector<HeaderField> b = {{"Host", "x"}, {"Cookie", bigCookie}};
  std::vector<HeaderField> c = {{"Host", "x"}, {"Cookie", "a=1; c=2"}};
  auto fa = HeaderOrderFingerprint::compute("GET", 1, 1, a);
  auto fb = HeaderOrderFingerprint::compute("GET", 1, 1, b);
  auto fc = HeaderOrderFingerprint::compute("GET", 1, 1, c);
  CHECK(fa.text == fb.text);
  CHECK(fa.cookieHash != fc.cookieHash);
  CHECK(fa.text.substr(4, 1) == "c");
  CHECK(fa.headerCount == 1);  // Cookie is not counted
}

TEST_CASE("fingerprint survives hostile input", "[risk][fingerprint]") {
  std::string many;
  for (int i = 0; i < 5000; ++i) many += "n" + std::to_string(i) + "=v;";
  std::vector<HeaderField> h = {{"Cookie", many}, {"Cookie", ";;;=;==; ;"}, {"", ""},
                                {std::string_view("\0\xff", 2), "x"}};
  auto fp = HeaderOrderFingerprint::compute(std::string_view("\x01_", 2), 9, 9, h);
  CHECK(fp.text.size() == 34);
  CHECK(fp.text.substr(0, 2) == "xx");
}

// The documented formula's K part, written the slow way (split, trim, sort, chain), to check the
// one-pass parser against.
uint64_t referenceCookieHash(const std::vector<HeaderField>& headers, size_t* count) {
  std::vector<std::string> names;
  for (const auto& [h, v] : headers) {
    if (toLowerCopy(h) != "cookie") continue;
    size_t pos = 0;
    while (pos <= v.size()) {
      size_t end = v.find(';', pos);
      if (end == std::string_view::npos) end = v.size();
      std::string_view pair = v.substr(pos, end - pos);
      const size_t eq = pair.find('=');
      const std::string_view n = sluice::trim(eq == std::string_view::npos ? pair : pair.substr(0, eq));
      if (!n.empty()) {
        if (names.size() == kMaxFingerprintCookies) break;
        names.emplace_back(n);
      }
      pos = end + 1;
    }
  }
  std::sort(names.begin(), names.end());
  uint64_t h = 0;
  for (const auto& n : names) h = hash64(n, h + 1);
  *count = names.size();
  return h;
}

TEST_CASE("fingerprint cookie pass: K hash and the wanted cookie match the slow definitions",
          "[risk][fingerprint]") {
  std::string many;
  for (int i = 0; i < 70; ++i) many += "c" + std::to_string(i) + "=v; ";
  many += "sluice_pass=after-64";  // the header values are views: this string outlives them
  const std::vector<std::vector<HeaderField>> cases = {
      {{"Cookie", "a=1; sluice_pass=TOKEN; b=2"}},
      {{"cookie", " sluice_pass = spaced ; x=1"}},      // space before '=': findCookie says no
      {{"COOKIE", "sluice_passx=1; sluice_pass=  v  "}},  // prefix name first
      {{"Cookie", "a=1"}, {"Host", "h"}, {"Cookie", "sluice_pass=second-header"}},
      {{"Cookie", many}},                                 // names capped, the token still found
      {{"Cookie", "sluice_pass="}, {"Cookie", "sluice_pass=later"}},  // first match wins, even empty
      {{"Cookie", ";;; ; =x; sluice_pass"}},
      {{"Cookie", ""}},
      {{"Cookie", "\tsluice_pass=tab\t; q"}},
      {{"Referer", "r"}, {"Cookiex", "sluice_pass=not-a-cookie-header"}},
      {{"Cookie", "a=b=c; sluice_pass=x=y"}},
  };
  for (const auto& h : cases) {
    RiskRequest r;
    r.headers = h;
    INFO(h.front().second);
    std::string_view value = "unset";
    const auto fp = HeaderOrderFingerprint::compute("GET", 1, 1, h, "sluice_pass", &value);
    CHECK(value == RiskEngineCookie(r, "sluice_pass"));
    CHECK(fp.text == HeaderOrderFingerprint::compute("GET", 1, 1, h).text);
    size_t n = 0;
    const uint64_t want = referenceCookieHash(h, &n);
    CHECK(fp.cookieHash == want);
  }
  // A name containing '=' is matched as findCookie matches it (the part before its own '=').
  RiskRequest r;
  r.headers = {{"Cookie", "a=b=1"}};
  std::string_view value;
  HeaderOrderFingerprint::compute("GET", 1, 1, r.headers, "a=b", &value);
  CHECK(value == RiskEngineCookie(r, "a=b"));
  CHECK(value == "1");
}

}  // namespace
}  // namespace sluice::risk

namespace sluice::risk {
namespace {

// The cookie jar (one split per request) against RiskEngine::findCookie's rescanning definition,
// kept here as written before the jar existed.
std::string_view rescanFindCookie(const std::vector<HeaderField>& headers, std::string_view name) {
  for (const auto& [h, value] : headers) {
    if (h.size() != 6 || !equalsIgnoreCase(h, "cookie")) continue;
    size_t pos = 0;
    while (pos < value.size()) {
      size_t end = value.find(';', pos);
      if (end == std::string_view::npos) end = value.size();
      std::string_view pair = trim(value.substr(pos, end - pos));
      pos = end + 1;
      if (pair.size() > name.size() && pair.substr(0, name.size()) == name &&
          pair[name.size()] == '=')
        return trim(pair.substr(name.size() + 1));
    }
  }
  return {};
}

TEST_CASE("cookie jar finds what the rescanning findCookie finds, on random headers",
          "[risk][fingerprint][cookies]") {
  std::mt19937_64 rng(5);
  const std::vector<std::string> names = {"member", "device", "sluice_pass", "a", "member_x",
                                          "a=b", "", "Member"};
  const std::string pieces[] = {"member", "device", "sluice_pass", "a", "b", "=", "=", ";", ";",
                                " ", "\t", "x", "m1", "member_x", "Member", "=v", "  "};
  for (int round = 0; round < 3000; ++round) {
    std::vector<std::string> values;
    std::vector<std::string> headerNames;
    const int n = static_cast<int>(rng() % 4);
    for (int i = 0; i < n; ++i) {
      std::string v;
      const int k = static_cast<int>(rng() % 14);
      for (int j = 0; j < k; ++j) v += pieces[rng() % std::size(pieces)];
      values.push_back(v);
      headerNames.push_back(rng() % 5 == 0 ? "X-Other" : (rng() % 2 ? "Cookie" : "cookie"));
    }
    std::vector<HeaderField> h;
    for (int i = 0; i < n; ++i) h.push_back({headerNames[i], values[i]});
    RiskRequest r;
    r.headers = h;
    r.cookies.split(r.headers);
    for (const auto& name : names) {
      INFO(round << " name=" << name);
      REQUIRE(r.cookies.find(name) == rescanFindCookie(h, name));
      REQUIRE(RiskEngine::findCookie(r, name) == rescanFindCookie(h, name));
    }
    // The fingerprint from the jar and scan equals the one computed from the headers alone.
    const auto composed =
        HeaderOrderFingerprint::compose("GET", 1, 1, HeaderScan::of(r.headers), r.cookies);
    REQUIRE(composed.text == HeaderOrderFingerprint::compute("GET", 1, 1, h).text);
    size_t count = 0;
    REQUIRE(composed.cookieHash == referenceCookieHash(h, &count));
  }
}

}  // namespace
}  // namespace sluice::risk

namespace sluice::risk {
namespace {

// The H and K parts are the hashes' top 48 bits in lower-case hex, as printf writes them.
TEST_CASE("fingerprint hex parts equal printf of the hashes, on random names",
          "[risk][fingerprint]") {
  std::mt19937_64 rng(11);
  const char alphabet[] = "abcXYZ-_09f";
  for (int round = 0; round < 3000; ++round) {
    std::vector<std::string> names, values;
    const int n = static_cast<int>(rng() % 6);
    for (int i = 0; i < n; ++i) {
      std::string name;
      const int len = 1 + static_cast<int>(rng() % 24);
      for (int j = 0; j < len; ++j) name += alphabet[rng() % (sizeof alphabet - 1)];
      names.push_back(name);
      values.push_back("v");
    }
    if (rng() % 2) {
      names.push_back("Cookie");
      values.push_back("k" + std::to_string(rng() % 1000) + "=1; z=2");
    }
    std::vector<HeaderField> h;
    for (size_t i = 0; i < names.size(); ++i) h.push_back({names[i], values[i]});
    const auto fp = HeaderOrderFingerprint::compute("GET", 1, 1, h);
    char want[32];
    snprintf(want, sizeof want, "%012llx_",
             static_cast<unsigned long long>(fp.namesHash >> 16));
    snprintf(want + 13, sizeof want - 13, "%012llx",
             static_cast<unsigned long long>(fp.cookieHash >> 16));
    INFO(fp.text.str());
    REQUIRE(fp.text.substr(9, 25) == std::string_view(want, 25));
  }
}

}  // namespace
}  // namespace sluice::risk
