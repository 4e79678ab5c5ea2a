#include "risk/user_agent.h"

#include <catch2/catch.hpp>

#include "tests/unit/risk/risk_test_util.h"

namespace sluice::risk {
namespace {

using namespace testing;

UserAgentAnalysis analyzeHeaders(std::vector<HeaderField> h) {
  return UserAgentAnalysis::analyze(makeRequest(std::move(h)));
}

TEST_CASE("a real Chrome navigation raises nothing", "[risk][ua]") {
  auto a = analyzeHeaders(chromeNavigation());
  CHECK(a.family == BrowserFamily::kChrome);
  CHECK(a.majorVersion == 124);
  CHECK_FALSE(a.automation);
  CHECK_FALSE(a.headless);
  CHECK_FALSE(a.hintsMismatch());
  CHECK_FALSE(a.hintsMissing);
  CHECK_FALSE(a.hintsGarbage);
  CHECK_FALSE(a.headerOrderMismatch);
}

TEST_CASE("a real Firefox navigation raises nothing", "[risk][ua]") {
  auto a = analyzeHeaders(firefoxNavigation());
  CHECK(a.family == BrowserFamily::kFirefox);
  CHECK(a.majorVersion == 125);
  CHECK_FALSE(a.hintsMissing);
  CHECK_FALSE(a.headerOrderMismatch);
}

TEST_CASE("missing or empty User-Agent", "[risk][ua]") {
  CHECK(analyzeHeaders({{"Host", "x"}}).missing);
  CHECK(analyzeHeaders({{"Host", "x"}, {"User-Agent", "  "}}).missing);
}

TEST_CASE("automation clients are recognised", "[risk][ua]") {
  for (const char* ua : {"curl/8.5.0", "Wget/1.21", "python-requests/2.31.0", "Python-urllib/3.11",
                         "Python/3.11 aiohttp/3.9.1", "Go-http-client/1.1", "okhttp/4.12.0",
                         "Java/17.0.2", "Apache-HttpClient/4.5.14 (Java/17)", "node-fetch/1.0",
                         "axios/1.6.2"}) {
    INFO(ua);
    auto a = analyzeHeaders({{"Host", "x"}, {"User-Agent", ua}});
    CHECK(a.automation);
    CHECK(a.family == BrowserFamily::kUnknown);
  }
}

TEST_CASE("headless and driver markers", "[risk][ua]") {
  for (const char* ua : {"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/124.0.0.0 Safari/537.36",
                         "Mozilla/5.0 PhantomJS/2.1.1", "Mozilla/5.0 Selenium", "puppeteer-bot",
                         "Mozilla/5.0 Playwright/1.40"}) {
    INFO(ua);
    CHECK(analyzeHeaders({{"Host", "x"}, {"User-Agent", ua}}).headless);
  }
}

TEST_CASE("browser families and versions", "[risk][ua]") {
  auto edge = analyzeHeaders({{"User-Agent",
      "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.51"}});
  CHECK(edge.family == BrowserFamily::kEdge);
  CHECK(edge.majorVersion == 124);
  auto safari = analyzeHeaders({{"User-Agent", kSafariUa}});
  CHECK(safari.family == BrowserFamily::kSafari);
  CHECK(safari.majorVersion == 17);
  CHECK(analyzeHeaders({{"User-Agent", "SomethingElse/1.0"}}).family == BrowserFamily::kUnknown);
}

TEST_CASE("Chrome UA with Python's header order is a mismatch", "[risk][ua]") {
  auto a = analyzeHeaders(pythonOrderChromeUa());
  CHECK(a.family == BrowserFamily::kChrome);
  CHECK(a.hintsMissing);
  CHECK(a.headerOrderMismatch);
}

TEST_CASE("client hints that disagree with the UA", "[risk][ua]") {
  SECTION("version") {
    auto h = chromeNavigation();
    h[2].second = "\"Google Chrome\";v=\"120\", \"Chromium\";v=\"120\"";
    CHECK(analyzeHeaders(h).hintsBrandMismatch);
  }
  SECTION("brand: Edge hints on a Chrome UA") {
    auto h = chromeNavigation();
    h[2].second = "\"Microsoft Edge\";v=\"124\", \"Chromium\";v=\"124\"";
    CHECK(analyzeHeaders(h).hintsBrandMismatch);
  }
  SECTION("mobile") {
    auto h = chromeNavigation();
    h[3].second = "?1";
    CHECK(analyzeHeaders(h).hintsMobileMismatch);
  }
  SECTION("platform") {
    auto h = chromeNavigation();
    h[4].second = "\"macOS\"";
    CHECK(analyzeHeaders(h).hintsPlatformMismatch);
  }
  SECTION("Firefox never sends client hints") {
    auto h = firefoxNavigation();
    h.insert(h.begin() + 1, {"sec-ch-ua", "\"Chromium\";v=\"124\""});
    auto a = analyzeHeaders(h);
    CHECK(a.hintsBrandMismatch);
  }
}

TEST_CASE("garbage client hints are flagged, never crash", "[risk][ua]") {
  for (std::string_view v : {"garbage", "\"unterminated", "\"A\";v=", "\"A\";v=\"x\"", "", ",,,",
                             "\"A\" \"B\"", "\"A\";v=\"1\",", "\"A\";;;"}) {
    auto h = chromeNavigation();
    h[2].second = v;
    INFO(std::string(v));
    CHECK(analyzeHeaders(h).hintsGarbage);
  }
  auto h = chromeNavigation();
  h[3].second = "yes";
  CHECK(analyzeHeaders(h).hintsGarbage);
  h = chromeNavigation();
  h[4].second = "Windows";  // unquoted
  CHECK(analyzeHeaders(h).hintsGarbage);
  h = chromeNavigation();
  std::string huge(10000, '"');
  h[2].second = huge;
  CHECK(analyzeHeaders(h).hintsGarbage);
}

TEST_CASE("header case unlike the claimed browser", "[risk][ua]") {
  auto h = chromeNavigation();
  h[2].first = "Sec-Ch-Ua";  // a copier normalising case
  auto a = analyzeHeaders(h);
  CHECK(a.headerOrderMismatch);
  // All-lower-case (HTTP/2 downgraded by the terminator) is not a case mismatch.
  auto lower = chromeNavigation();
  std::vector<std::string> names;
  for (auto& f : lower) names.push_back(toLowerCopy(f.first));
  for (size_t i = 0; i < lower.size(); ++i) lower[i].first = names[i];
  CHECK_FALSE(analyzeHeaders(lower).headerOrderMismatch);
}

TEST_CASE("browser without Accept-Language is a mismatch", "[risk][ua]") {
  auto h = chromeNavigation();
  h.erase(h.begin() + 13);
  CHECK(analyzeHeaders(h).headerOrderMismatch);
}

TEST_CASE("oversized UA is scanned only at its head", "[risk][ua]") {
  std::string ua = std::string(kChromeUa) + std::string(100000, 'x') + " curl/8";
  auto a = analyzeHeaders({{"User-Agent", ua}});
  CHECK(a.oversized);
  CHECK_FALSE(a.automation);
  CHECK(a.family == BrowserFamily::kChrome);
}

}  // namespace
}  // namespace sluice::risk
