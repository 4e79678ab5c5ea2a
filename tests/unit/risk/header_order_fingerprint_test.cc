#include "risk/header_order_fingerprint.h"

#include <catch2/catch.hpp>
#include <regex>

#include "core/hash.h"
#include "tests/unit/risk/risk_test_util.h"

namespace sluice::risk {
namespace {

using testing::chromeNavigation;

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

}  // namespace
}  // namespace sluice::risk
