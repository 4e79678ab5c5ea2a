#include "core/strings.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "core/clock.h"

namespace sluice {
namespace {

TEST_CASE("equalsIgnoreCase: the word path agrees with a byte-at-a-time reference", "[core][strings]") {
  auto reference = [](std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); i++)
      if (asciiLower(a[i]) != asciiLower(b[i])) return false;
    return true;
  };
  // Pairs that differ in one byte by 0x20 (the case bit) or by anything, at every position of
  // 1-40 byte names, including the range edges a wrong SWAR constant would fold ('@' '`' '[' '{')
  // and non-ASCII bytes whose 0x20 bit is not a case.
  uint64_t seed = 7;
  auto next = [&] { return seed = seed * 6364136223846793005ULL + 1442695040888963407ULL; };
  const char pool[] = "aAzZ@`[{-_09\xc1\xe1\x7f ";
  for (int round = 0; round < 50000; round++) {
    const size_t len = 1 + next() % 40;
    std::string a, b;
    for (size_t i = 0; i < len; i++) {
      char c = pool[(next() >> 33) % (sizeof pool - 1)];
      a.push_back(c);
      uint64_t r = next() >> 60;
      b.push_back(r < 6 ? c : r < 12 ? static_cast<char>(c ^ 0x20) : pool[(next() >> 33) % (sizeof pool - 1)]);
    }
    REQUIRE(equalsIgnoreCase(a, b) == reference(a, b));
    REQUIRE(equalsIgnoreCase(a, a));
  }
}

TEST_CASE("equalsLowerCase agrees with equalsIgnoreCase against lower-case names",
          "[core][strings]") {
  // The risk phase's literals (hop headers, Cookie) and random lower-case names of 1-40 bytes,
  // against the same bytes with each byte's case bit flipped or replaced, at every length.
  uint64_t seed = 11;
  auto next = [&] { return seed = seed * 6364136223846793005ULL + 1442695040888963407ULL; };
  const char lowerPool[] = "az@`[{-_09\xc1\xe1\x7f ";  // no upper case: equalsLowerCase's contract
  const char pool[] = "aAzZ@`[{-_09\xc1\xe1\x7f ";
  std::vector<std::string> lowers = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                                     "x-real-ip", "forwarded", "via", "cookie"};
  for (int round = 0; round < 20000; round++) {
    std::string lower;
    const size_t len = 1 + next() % 40;
    for (size_t i = 0; i < len; i++)
      lower.push_back(lowerPool[(next() >> 33) % (sizeof lowerPool - 1)]);
    lowers.push_back(lower);
    const std::string& l = lowers[round % 7 == 0 ? (next() >> 33) % 7 : lowers.size() - 1];
    std::string a;
    for (char c : l) {
      uint64_t r = next() >> 60;
      const char other = pool[(next() >> 33) % (sizeof pool - 1)];
      a.push_back(r < 8 ? c : r < 14 ? static_cast<char>(c ^ 0x20) : other);
    }
    if (next() % 16 == 0) a.pop_back();  // a length mismatch
    REQUIRE(equalsLowerCase(a, l) == equalsIgnoreCase(a, l));
    REQUIRE(equalsLowerCase(l, l));
  }
  CHECK(equalsLowerCase("X-Forwarded-For", "x-forwarded-for"));
  CHECK(equalsLowerCase("COOKIE", "cookie"));
  CHECK_FALSE(equalsLowerCase("Cookiez", "cookie"));
  CHECK_FALSE(equalsLowerCase("Cookie", "cookiz"));
  CHECK_FALSE(equalsLowerCase("", "via"));
}

TEST_CASE("equalsIgnoreCase compares ASCII case-insensitively", "[core][strings]") {
  CHECK(equalsIgnoreCase("Content-Length", "content-length"));
  CHECK(equalsIgnoreCase("", ""));
  CHECK_FALSE(equalsIgnoreCase("abc", "abcd"));
  CHECK_FALSE(equalsIgnoreCase("abc", "abd"));
  // Only ASCII letters fold: '@' (0x40) and '`' (0x60) differ by 32 but are not a case pair.
  CHECK_FALSE(equalsIgnoreCase("@", "`"));
  CHECK_FALSE(equalsIgnoreCase("[", "{"));
}

TEST_CASE("toLower lowers ASCII letters only", "[core][strings]") {
  CHECK(toLower("HeLLo-World_09") == "hello-world_09");
  CHECK(toLower("") == "");
  CHECK(toLower("\xC3\x89") == "\xC3\x89");  // UTF-8 bytes untouched
}

TEST_CASE("trim strips spaces and tabs at both ends", "[core][strings]") {
  CHECK(trim("  a b \t") == "a b");
  CHECK(trim("\t\t") == "");
  CHECK(trim("") == "");
  CHECK(trim("x") == "x");
}

TEST_CASE("headerHasToken finds comma-separated tokens", "[core][strings]") {
  CHECK(headerHasToken("keep-alive, Upgrade", "upgrade"));
  CHECK(headerHasToken("close", "Close"));
  CHECK(headerHasToken(" ,close ,", "close"));
  CHECK_FALSE(headerHasToken("keep-alive", "close"));
  CHECK_FALSE(headerHasToken("closed", "close"));
  CHECK_FALSE(headerHasToken("", "close"));
}

TEST_CASE("parseDurationNanos accepts every unit", "[core][strings]") {
  int64_t v = -1;
  CHECK(parseDurationNanos("100ns", &v));
  CHECK(v == 100);
  CHECK(parseDurationNanos("100us", &v));
  CHECK(v == 100000);
  CHECK(parseDurationNanos("250ms", &v));
  CHECK(v == 250 * kMillis);
  CHECK(parseDurationNanos("5s", &v));
  CHECK(v == 5 * kSeconds);
  CHECK(parseDurationNanos("2m", &v));
  CHECK(v == 120 * kSeconds);
  CHECK(parseDurationNanos("1h", &v));
  CHECK(v == 3600 * kSeconds);
  CHECK(parseDurationNanos(" 0s ", &v));
  CHECK(v == 0);
}

TEST_CASE("parseDurationNanos fractions are exact", "[core][strings]") {
  int64_t v = 0;
  CHECK(parseDurationNanos("1.5s", &v));
  CHECK(v == 1500 * kMillis);
  CHECK(parseDurationNanos(".5s", &v));
  CHECK(v == 500 * kMillis);
  // Regression: the double-based parser came out a nanosecond short (1000999999 for 1.001s).
  CHECK(parseDurationNanos("1.001s", &v));
  CHECK(v == 1001000000);
  CHECK(parseDurationNanos("1.019s", &v));
  CHECK(v == 1019000000);
  CHECK(parseDurationNanos("1.23s", &v));
  CHECK(v == 1230000000);
  CHECK(parseDurationNanos("2.5m", &v));
  CHECK(v == 150 * kSeconds);
  CHECK(parseDurationNanos("1.5ns", &v));
  CHECK(v == 1);  // truncated to whole nanoseconds
}

TEST_CASE("parseDurationNanos refuses bare numbers and junk", "[core][strings]") {
  int64_t v = 42;
  CHECK_FALSE(parseDurationNanos("5", &v));
  CHECK_FALSE(parseDurationNanos("", &v));
  CHECK_FALSE(parseDurationNanos("s", &v));
  CHECK_FALSE(parseDurationNanos("-5s", &v));
  CHECK_FALSE(parseDurationNanos("5 s", &v));
  CHECK_FALSE(parseDurationNanos("5S", &v));
  CHECK_FALSE(parseDurationNanos("5sec", &v));
  CHECK_FALSE(parseDurationNanos("1e3ms", &v));
  CHECK_FALSE(parseDurationNanos("1.2.3s", &v));
  CHECK_FALSE(parseDurationNanos(".s", &v));
  CHECK(v == 42);  // untouched on failure
}

TEST_CASE("parseDurationNanos refuses overflow", "[core][strings]") {
  int64_t v = 0;
  CHECK(parseDurationNanos("2562047h", &v));  // fits in int64 nanoseconds
  CHECK_FALSE(parseDurationNanos("2562048h", &v));
  CHECK_FALSE(parseDurationNanos("99999999999999999999999s", &v));
}

TEST_CASE("parseSize accepts bytes and binary multiples", "[core][strings]") {
  uint64_t v = 0;
  CHECK(parseSize("512", &v));
  CHECK(v == 512);
  CHECK(parseSize("512b", &v));
  CHECK(v == 512);
  CHECK(parseSize("16k", &v));
  CHECK(v == 16 * 1024);
  CHECK(parseSize("16KB", &v));
  CHECK(v == 16 * 1024);
  CHECK(parseSize("8m", &v));
  CHECK(v == 8 * 1024 * 1024);
  CHECK(parseSize("8M", &v));
  CHECK(v == 8 * 1024 * 1024);
  CHECK(parseSize("1g", &v));
  CHECK(v == 1024ull * 1024 * 1024);
  CHECK(parseSize("1.5k", &v));
  CHECK(v == 1536);
  CHECK(parseSize("0", &v));
  CHECK(v == 0);
}

TEST_CASE("parseSize refuses junk", "[core][strings]") {
  uint64_t v = 7;
  CHECK_FALSE(parseSize("", &v));
  CHECK_FALSE(parseSize("k", &v));
  CHECK_FALSE(parseSize("-1k", &v));
  CHECK_FALSE(parseSize("1t", &v));
  CHECK_FALSE(parseSize("1 k", &v));
  CHECK_FALSE(parseSize("ten", &v));
  CHECK(v == 7);
}

TEST_CASE("parseSize refuses values beyond uint64 instead of overflowing", "[core][strings]") {
  // Regression: the double -> uint64_t cast was undefined behaviour; on x86 "99999999999g"
  // parsed as 0, which for max_body_size means "unlimited".
  uint64_t v = 0;
  CHECK_FALSE(parseSize("99999999999g", &v));
  CHECK_FALSE(parseSize("18446744073709551616", &v));
  CHECK_FALSE(parseSize("1000000000000000000000000000000", &v));
  CHECK(parseSize("18446744073709551615", &v));
  CHECK(v == UINT64_MAX);
}

TEST_CASE("jsonEscape escapes quotes, backslashes and control bytes", "[core][strings]") {
  CHECK(jsonEscape("plain") == "plain");
  CHECK(jsonEscape("a\"b\\c") == "a\\\"b\\\\c");
  CHECK(jsonEscape("\n\r\t") == "\\n\\r\\t");
  CHECK(jsonEscape(std::string("\x01\x7f", 2)) == "\\u0001\\u007f");
  CHECK(jsonEscape(std::string("a\0b", 3)) == "a\\u0000b");
  CHECK(jsonEscape("\xC3\xA9") == "\xC3\xA9");  // UTF-8 passes through
}

}  // namespace
}  // namespace sluice
