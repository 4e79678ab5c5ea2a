// HeaderScan (one pass over header names) and the single-pass UA token matcher.
#include "risk/header_scan.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "core/hash.h"
#include "core/strings.h"
#include "risk/user_agent.h"
#include "tests/unit/risk/risk_test_util.h"

namespace sluice::risk {
namespace {

using namespace testing;

TEST_CASE("classifyHeader knows every id in any case and nothing else", "[risk][ua][scan]") {
  for (int k = 1; k < kHeaderIdCount; ++k) {
    const auto id = static_cast<HeaderId>(k);
    const std::string lower(headerIdName(id));
    std::string upper = lower;
    for (char& c : upper) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
    CHECK(classifyHeader(lower) == id);
    CHECK(classifyHeader(upper) == id);
    // One byte more, one byte less, or one byte changed: not that header.
    CHECK(classifyHeader(lower + "x") != id);
    CHECK(classifyHeader(lower.substr(0, lower.size() - 1)) != id);
    std::string changed = lower;
    changed[changed.size() / 2] ^= 1;
    CHECK(classifyHeader(changed) == HeaderId::kOther);
  }
  CHECK(classifyHeader("") == HeaderId::kOther);
  CHECK(classifyHeader("x-requested-with") == HeaderId::kOther);
  CHECK(classifyHeader("sec-fetch-user") == HeaderId::kOther);
  CHECK(classifyHeader(std::string(4000, 'a')) == HeaderId::kOther);
}

TEST_CASE("classifyHeader finds upper case at every position of every length", "[risk][ua][scan]") {
  // The word-at-a-time loads must see every byte of 1..40-byte names, and only 'A'..'Z' count.
  for (size_t n = 1; n <= 40; ++n) {
    for (size_t at = 0; at < n; ++at) {
      std::string name(n, 'x');
      bool upper = true;
      classifyHeader(name, &upper);
      CHECK_FALSE(upper);
      for (char c : {'A', 'Z', 'Q'}) {
        name[at] = c;
        upper = false;
        classifyHeader(name, &upper);
        INFO(n << " " << at << " " << c);
        CHECK(upper);
      }
      for (char c : {'@', '[', '`', '{', '\xc1', '\xda', '\x81'}) {
        name[at] = c;
        upper = true;
        classifyHeader(name, &upper);
        INFO(n << " " << at << " " << static_cast<int>(c));
        CHECK_FALSE(upper);
      }
    }
  }
  // A byte that would fold onto a letter with |0x20 but is not upper case is not that letter.
  CHECK(classifyHeader("cook\x09e") == HeaderId::kOther);
  CHECK(classifyHeader("\x03ookie") == HeaderId::kOther);
  CHECK(classifyHeader("HOST") == HeaderId::kHost);
}

TEST_CASE("HeaderScan records first positions and case per known header", "[risk][ua][scan]") {
  const std::vector<HeaderField> h = {{"Host", "a"},        {"sec-ch-ua", "x"},
                                      {"User-Agent", "ua1"}, {"X-Other", "1"},
                                      {"user-agent", "ua2"}, {"ACCEPT", "*/*"},
                                      {"Cookie", "a=1"},    {"cookie", "b=2"}};
  const HeaderScan s = HeaderScan::of(h);
  CHECK(s.index(HeaderId::kHost) == 0);
  CHECK(s.index(HeaderId::kSecChUa) == 1);
  CHECK(s.index(HeaderId::kUserAgent) == 2);
  CHECK(s.value(h, HeaderId::kUserAgent) == "ua1");  // the first one wins
  CHECK(s.index(HeaderId::kAccept) == 5);
  CHECK(s.index(HeaderId::kCookie) == 6);
  CHECK_FALSE(s.has(HeaderId::kAcceptLanguage));
  CHECK(s.value(h, HeaderId::kAcceptLanguage).empty());
  CHECK(s.anyUpper);
  // User-Agent appears Title-Case and lower case: both "not lower" and "not Title" are set.
  CHECK((s.notLower & HeaderScan::bit(HeaderId::kUserAgent)));
  CHECK((s.notTitle & HeaderScan::bit(HeaderId::kUserAgent)));
  CHECK_FALSE((s.notLower & HeaderScan::bit(HeaderId::kSecChUa)));
  CHECK((s.notTitle & HeaderScan::bit(HeaderId::kSecChUa)));
  CHECK((s.notTitle & HeaderScan::bit(HeaderId::kAccept)));  // ACCEPT is not Accept
  CHECK_FALSE((s.notTitle & HeaderScan::bit(HeaderId::kHost)));
  const HeaderScan lower = HeaderScan::of({{"user-agent", "x"}, {"x-a", "1"}});
  CHECK_FALSE(lower.anyUpper);
  CHECK(HeaderScan::of({}).index(HeaderId::kHost) == -1);
}

TEST_CASE("HeaderScan's fingerprint part equals the formula's chained hash64 of the names",
          "[risk][scan][fingerprint]") {
  // The documented formula (risk/header_order_fingerprint.h), byte by byte.
  auto reference = [](const std::vector<HeaderField>& h, uint32_t* count) {
    uint64_t names = 0;
    *count = 0;
    for (const auto& [name, value] : h) {
      if (equalsIgnoreCase(name, "cookie") || equalsIgnoreCase(name, "referer")) continue;
      names = hash64(name, names + 1);
      ++*count;
    }
    return names;
  };
  std::mt19937_64 rng(11);
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_0123456789";
  const std::vector<std::string> known = {"Cookie", "cookie", "COOKIE", "Referer", "referer",
                                          "User-Agent", "sec-ch-ua-platform", "Accept", "Host"};
  for (int round = 0; round < 2000; ++round) {
    std::vector<std::string> names;
    const int n = static_cast<int>(rng() % 20);
    for (int i = 0; i < n; ++i) {
      if (rng() % 3 == 0) {
        names.push_back(known[rng() % known.size()]);
      } else {
        std::string name(rng() % 41, 'x');  // 0..40 bytes: word tails, the 18-byte limit, beyond
        for (char& c : name) c = alphabet[rng() % alphabet.size()];
        names.push_back(name);
      }
    }
    std::vector<HeaderField> h;
    for (const auto& name : names) h.push_back({name, "v"});
    uint32_t count = 0;
    const uint64_t want = reference(h, &count);
    const HeaderScan s = HeaderScan::of(h);
    INFO(round);
    REQUIRE(s.namesHash == want);
    REQUIRE(s.otherCount == count);
  }
}

// The original one-find-per-token definition, to compare the single-pass matcher against.
bool containsIgnoreCase(std::string_view hay, std::string_view needle) {
  return toLower(hay).find(needle) != std::string::npos;
}

TEST_CASE("UA token matching: shared first bytes, ends of string, case", "[risk][ua][scan]") {
  struct Case {
    const char* ua;
    bool automation, headless;
    const char* token;
  };
  const Case cases[] = {
      {"python-httpx/0.27", true, false, "python-httpx"},
      {"Python-Urllib/3.11", true, false, "python-urllib"},
      {"PostmanRuntime/7.36", true, false, "postmanruntime"},
      {"x curl/", true, false, "curl/"},  // token at the very end
      {"curl", false, false, ""},         // a prefix of a token is not the token
      {"Mozilla/5.0 PLAYWRIGHT python-requests/2", false, true, "playwright"},  // headless wins
      {"Mozilla/5.0 (X11) HeadlessChrome/124.0 Safari/537.36", false, true, "headlesschrome"},
      {"okhttp/4.9 selenium", false, true, "selenium"},
      {"java/17 wget/1.2", true, false, "wget/"},  // list order decides, not position
  };
  for (const auto& c : cases) {
    auto a = UserAgentAnalysis::analyze(makeRequest({{"User-Agent", c.ua}}));
    INFO(c.ua);
    CHECK(a.automation == c.automation);
    CHECK(a.headless == c.headless);
    CHECK(a.automationToken == c.token);
    if (c.automation || c.headless) CHECK(containsIgnoreCase(c.ua, c.token));
  }
  // The version follows the first occurrence of the browser token.
  auto v = UserAgentAnalysis::analyze(
      makeRequest({{"User-Agent", "Mozilla/5.0 Chrome/120.0 Chrome/99.0 Safari/537.36"}}));
  CHECK(v.family == BrowserFamily::kChrome);
  CHECK(v.majorVersion == 120);
  auto e = UserAgentAnalysis::analyze(
      makeRequest({{"User-Agent", "Mozilla/5.0 Chrome/124.0 Safari/537.36 Edg/123.0"}}));
  CHECK(e.family == BrowserFamily::kEdge);
  CHECK(e.majorVersion == 123);
  auto s = UserAgentAnalysis::analyze(makeRequest(
      {{"User-Agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4) Version/17.4 Mobile Safari/604.1"}}));
  CHECK(s.family == BrowserFamily::kSafari);
  CHECK(s.majorVersion == 17);
  CHECK(s.mobile);
}

}  // namespace
}  // namespace sluice::risk

namespace sluice::risk {
namespace {

void requireSameScan(const HeaderScan& a, const HeaderScan& b) {
  for (int k = 0; k < kHeaderIdCount; ++k) REQUIRE(a.first[k] == b.first[k]);
  REQUIRE(a.notLower == b.notLower);
  REQUIRE(a.notTitle == b.notTitle);
  REQUIRE(a.anyUpper == b.anyUpper);
  REQUIRE(a.namesHash == b.namesHash);
  REQUIRE(a.otherCount == b.otherCount);
}

// Every answer the memo gives equals a fresh scan: random sequences drawn from a small pool of
// names (so sequences repeat and hit), names that differ only in case or in one byte at any
// position (same lengths: same set, must not match), empty and long names.
TEST_CASE("HeaderScanMemo answers exactly what a fresh scan says, on random name sequences",
          "[risk][ua][scan]") {
  std::mt19937_64 rng(23);
  std::vector<std::string> pool = {"Host", "host", "HOST", "User-Agent", "user-agent",
                                   "Accept", "accepT", "Cookie", "Referer", "sec-ch-ua",
                                   "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest",
                                   "Accept-Language", "Accept-Encoding", "X", "", "x-a",
                                   "Upgrade-Insecure-Requests", "sec-ch-ua-platform",
                                   std::string(300, 'a'), "ABCDEFGHIJKLMNOP", "ABCDEFGHIJKLMNOQ"};
  // Same-length variants of every pool name, one byte changed at each position.
  const size_t base = pool.size();
  for (size_t i = 0; i < base; ++i)
    for (size_t j = 0; j < pool[i].size() && j < 24; ++j) {
      std::string v = pool[i];
      v[j] = static_cast<char>(v[j] ^ (rng() % 2 ? 0x01 : 0x20));
      pool.push_back(v);
    }
  HeaderScanMemo memo;
  std::vector<std::vector<std::string>> seen;
  for (int round = 0; round < 20000; ++round) {
    std::vector<std::string> names;
    if (!seen.empty() && rng() % 3 != 0) {
      names = seen[rng() % seen.size()];  // a repeat, sometimes with one byte changed
      if (!names.empty() && rng() % 4 == 0) {
        std::string& n = names[rng() % names.size()];
        if (!n.empty()) n[rng() % n.size()] ^= static_cast<char>(1 << (rng() % 7));
      }
    } else {
      const size_t count = rng() % 40;  // past kMaxNames too
      for (size_t i = 0; i < count; ++i) names.push_back(pool[rng() % (rng() % 2 ? 12 : pool.size())]);
      if (seen.size() < 200) seen.push_back(names);
    }
    std::vector<HeaderField> h;
    for (const auto& n : names) h.push_back({n, "v"});
    INFO("round " << round << " names " << names.size());
    requireSameScan(memo.scan(h), HeaderScan::of(h));
  }
  CHECK(memo.stats().hits > 1000);
  CHECK(memo.stats().misses > 100);
  CHECK(memo.stats().uncacheable > 100);
}

TEST_CASE("HeaderScanMemo: a hit is only the same bytes in the same order", "[risk][ua][scan]") {
  HeaderScanMemo memo;
  const std::vector<HeaderField> a = {{"Host", ""}, {"User-Agent", ""}, {"Cookie", ""}};
  const std::vector<HeaderField> caseChanged = {{"Host", ""}, {"User-agent", ""}, {"Cookie", ""}};
  const std::vector<HeaderField> moved = {{"Host", ""}, {"Cookie", ""}, {"User-Agent", ""}};
  const std::vector<HeaderField> split = {{"HostUser", ""}, {"-Agent", ""}, {"Cookie", ""}};
  requireSameScan(memo.scan(a), HeaderScan::of(a));
  CHECK(memo.stats().misses == 1);
  requireSameScan(memo.scan(a), HeaderScan::of(a));
  CHECK(memo.stats().hits == 1);
  for (const auto* h : {&caseChanged, &moved, &split}) requireSameScan(memo.scan(*h), HeaderScan::of(*h));
  CHECK(memo.stats().hits == 1);
  CHECK(memo.stats().misses == 4);
  requireSameScan(memo.scan({}), HeaderScan::of({}));
  CHECK(memo.stats().uncacheable == 1);
}

// The compare reads names of 8 bytes or more as whole words, the last one overlapping the one
// before it: a byte changed at any position, in the overlap or not, must still be a miss.
TEST_CASE("HeaderScanMemo: one changed byte at any position of a 1-40 byte name is a miss",
          "[risk][ua][scan]") {
  HeaderScanMemo memo;
  for (size_t len = 1; len <= 40; ++len) {
    std::string name;
    for (size_t i = 0; i < len; ++i) name.push_back(static_cast<char>('a' + i % 26));
    const std::vector<HeaderField> stored = {{"Host", ""}, {name, ""}, {"User-Agent", ""}};
    requireSameScan(memo.scan(stored), HeaderScan::of(stored));
    for (size_t pos = 0; pos < len; ++pos) {
      std::string changed = name;
      changed[pos] = static_cast<char>(changed[pos] ^ 0x02);
      const std::vector<HeaderField> h = {{"Host", ""}, {changed, ""}, {"User-Agent", ""}};
      const uint64_t hits = memo.stats().hits;
      INFO("length " << len << " position " << pos);
      requireSameScan(memo.scan(h), HeaderScan::of(h));
      CHECK(memo.stats().hits == hits);
      requireSameScan(memo.scan(stored), HeaderScan::of(stored));  // keeps the original stored
    }
  }
}

}  // namespace
}  // namespace sluice::risk
