// UserAgentCache: the per-thread memo of the UA + client-hints analysis. A cached answer must be
// exactly what a fresh analysis says, and the header-order check must still run per request.
#include "risk/user_agent.h"

#include <catch2/catch.hpp>
#include <string>

#include "tests/unit/risk/risk_test_util.h"

namespace sluice::risk {
namespace {

using namespace testing;

void checkSame(const UserAgentAnalysis& a, const UserAgentAnalysis& b) {
  CHECK(a.missing == b.missing);
  CHECK(a.oversized == b.oversized);
  CHECK(a.automation == b.automation);
  CHECK(a.headless == b.headless);
  CHECK(a.automationToken == b.automationToken);
  CHECK(a.family == b.family);
  CHECK(a.majorVersion == b.majorVersion);
  CHECK(a.mobile == b.mobile);
  CHECK(a.hintsPresent == b.hintsPresent);
  CHECK(a.hintsMissing == b.hintsMissing);
  CHECK(a.hintsGarbage == b.hintsGarbage);
  CHECK(a.hintsBrandMismatch == b.hintsBrandMismatch);
  CHECK(a.hintsMobileMismatch == b.hintsMobileMismatch);
  CHECK(a.hintsPlatformMismatch == b.hintsPlatformMismatch);
  CHECK(a.headerOrderMismatch == b.headerOrderMismatch);
  CHECK(std::string_view(a.orderMismatchReason) == std::string_view(b.orderMismatchReason));
}

UserAgentAnalysis viaCache(const RiskRequest& r, UserAgentCache& cache) {
  return UserAgentAnalysis::analyze(r, HeaderScan::of(r.headers), &cache);
}

std::vector<std::vector<HeaderField>> corpus() {
  std::vector<std::vector<HeaderField>> c = {chromeNavigation(), firefoxNavigation(),
                                             pythonOrderChromeUa()};
  c.push_back({{"Host", "x"}, {"User-Agent", "curl/8.5.0"}});
  c.push_back({{"Host", "x"}, {"User-Agent", "Mozilla/5.0 HeadlessChrome/124.0.0.0 Safari/537.36"}});
  c.push_back({{"Host", "x"}, {"User-Agent", kSafariUa}, {"Accept-Language", "en"}});
  c.push_back({{"Host", "x"}});
  c.push_back({{"Host", "x"}, {"User-Agent", "   "}});
  auto garbage = chromeNavigation();
  garbage[2].second = "not a brand list";
  c.push_back(garbage);
  auto mobile = chromeNavigation();
  mobile[3].second = "?1";
  c.push_back(mobile);
  auto ios = chromeNavigation(
      "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
      "Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1");
  c.push_back(ios);
  auto noHints = chromeNavigation();
  noHints.erase(noHints.begin() + 2, noHints.begin() + 5);
  c.push_back(noHints);
  return c;
}

TEST_CASE("UA cache: a hit answers exactly what a fresh analysis does", "[risk][ua][cache]") {
  UserAgentCache cache;
  for (int round = 0; round < 2; ++round) {
    for (const auto& h : corpus()) {
      const RiskRequest r = makeRequest(h);
      checkSame(viaCache(r, cache), UserAgentAnalysis::analyze(r));
    }
  }
  // The two missing-UA requests are analysed without touching the table.
  CHECK(cache.stats().uncacheable == 4);
  // pythonOrderChromeUa and the hint-less Chrome share UA and (no) hints: one key for both, so
  // 9 distinct keys: 9 misses, and the other 11 cacheable analyses are hits.
  CHECK(cache.stats().misses == 9);
  CHECK(cache.stats().hits == 11);
  CHECK(cache.stats().evictions == 0);
}

TEST_CASE("UA cache: header order and case are checked on every request", "[risk][ua][cache]") {
  UserAgentCache cache;
  const RiskRequest good = makeRequest(chromeNavigation());
  CHECK_FALSE(viaCache(good, cache).headerOrderMismatch);
  // Same UA and hints, User-Agent moved after Accept-Encoding: a hit, and still a mismatch.
  auto moved = chromeNavigation();
  std::swap(moved[6], moved[12]);
  const RiskRequest bad = makeRequest(moved);
  const UserAgentAnalysis a = viaCache(bad, cache);
  CHECK(cache.stats().hits == 1);
  CHECK(a.headerOrderMismatch);
  checkSame(a, UserAgentAnalysis::analyze(bad));
  // Same bytes, lower-case User-Agent name over HTTP/1.1: the case rule still fires.
  auto lowerName = chromeNavigation();
  lowerName[6].first = "user-agent";
  const RiskRequest lc = makeRequest(lowerName);
  CHECK(viaCache(lc, cache).headerOrderMismatch);
  CHECK(cache.stats().hits == 2);
  CHECK_FALSE(viaCache(good, cache).headerOrderMismatch);
}

TEST_CASE("UA cache: every hint byte and presence is part of the key", "[risk][ua][cache]") {
  UserAgentCache cache;
  const RiskRequest base = makeRequest(chromeNavigation());
  CHECK_FALSE(viaCache(base, cache).hintsMismatch());
  // Another platform hint with the same UA: a miss, and the mismatch is found.
  auto mac = chromeNavigation();
  mac[4].second = "\"macOS\"";
  const UserAgentAnalysis a = viaCache(makeRequest(mac), cache);
  CHECK(a.hintsPlatformMismatch);
  CHECK(cache.stats().misses == 2);
  // An empty sec-ch-ua-mobile is garbage; an absent one is not: different keys.
  auto empty = chromeNavigation();
  empty[3].second = "";
  auto absent = chromeNavigation();
  absent.erase(absent.begin() + 3);
  CHECK(viaCache(makeRequest(empty), cache).hintsGarbage);
  CHECK_FALSE(viaCache(makeRequest(absent), cache).hintsGarbage);
  CHECK(cache.stats().misses == 4);
  CHECK(cache.stats().hits == 0);
  // Bytes moved between UA and hint at equal total length do not collide.
  auto shifted = chromeNavigation("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
                                  "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.3");
  shifted[4].second = "\"Windows\"6";
  checkSame(viaCache(makeRequest(shifted), cache), UserAgentAnalysis::analyze(makeRequest(shifted)));
  CHECK(cache.stats().hits == 0);
}

// The hash covers the UA and the lengths only; the hints' bytes are compared where they lie (short
// ones as overlapping words). Same UA and lengths, one hint byte changed at any position of a
// 1-30 byte hint: a miss with the fresh answer; the same bytes again: a hit.
TEST_CASE("UA cache: hint bytes are compared, not hashed, at every position and length",
          "[risk][ua][cache]") {
  UserAgentCache cache;
  for (size_t len = 1; len <= 30; ++len) {
    for (size_t pos = 0; pos < len; ++pos) {
      for (int which : {3, 4}) {  // sec-ch-ua-mobile, sec-ch-ua-platform
        std::string hint(len, 'w');
        hint[0] = '"';
        hint[pos] = static_cast<char>(hint[pos] ^ 0x01);
        auto h = chromeNavigation();
        h[static_cast<size_t>(which)].second = hint;
        const RiskRequest r = makeRequest(h);
        const uint64_t hits = cache.stats().hits;
        INFO("hint " << which << " length " << len << " position " << pos);
        checkSame(viaCache(r, cache), UserAgentAnalysis::analyze(r));
        CHECK(cache.stats().hits == hits);
        checkSame(viaCache(r, cache), UserAgentAnalysis::analyze(r));
        CHECK(cache.stats().hits == hits + 1);
      }
    }
  }
}

TEST_CASE("UA cache: bounded, evicts, stays correct past its size", "[risk][ua][cache]") {
  UserAgentCache cache;
  const size_t slots = UserAgentCache::kSets * UserAgentCache::kWays;
  std::vector<std::string> uas;
  for (size_t i = 0; i < slots * 2; ++i)
    uas.push_back("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/" + std::to_string(i) +
                  ".0.0.0 Safari/537.36");
  for (const auto& ua : uas) {
    const RiskRequest r = makeRequest(chromeNavigation(ua.c_str()));
    checkSame(viaCache(r, cache), UserAgentAnalysis::analyze(r));
  }
  CHECK(cache.stats().misses == uas.size());
  CHECK(cache.stats().evictions >= uas.size() - slots);
  // The most recent one is still there; the first ones are gone, and re-analysed correctly.
  const RiskRequest last = makeRequest(chromeNavigation(uas.back().c_str()));
  viaCache(last, cache);
  CHECK(cache.stats().hits == 1);
  const RiskRequest first = makeRequest(chromeNavigation(uas.front().c_str()));
  checkSame(viaCache(first, cache), UserAgentAnalysis::analyze(first));
}

TEST_CASE("UA cache: oversized keys are analysed, not stored", "[risk][ua][cache]") {
  UserAgentCache cache;
  const std::string longUa = std::string(kChromeUa) + std::string(600, 'x') + " curl/8";
  const RiskRequest r = makeRequest(chromeNavigation(longUa.c_str()));
  checkSame(viaCache(r, cache), UserAgentAnalysis::analyze(r));
  checkSame(viaCache(r, cache), UserAgentAnalysis::analyze(r));
  CHECK(cache.stats().uncacheable == 2);
  CHECK(cache.stats().hits + cache.stats().misses == 0);
}

}  // namespace
}  // namespace sluice::risk
