#include "proxy/server/identify.h"

#include <catch2/catch.hpp>
#include <set>
#include <string>

#include "core/ip.h"
#include "proxy/http/header_map.h"

namespace sluice {
namespace {

IpAddress ip(const char* text) {
  IpAddress a;
  REQUIRE(IpAddress::parse(text, &a));
  return a;
}

std::string resolve(const char* peer, const HeaderMap& h, const CidrSet& trusted) {
  return resolveClientIp(ip(peer), h, trusted).toString();
}

const CidrSet kTrusted = [] {
  CidrSet s;
  for (const char* t : {"10.0.0.0/8", "192.168.1.0/24", "::1/128", "fd00::/8"}) {
    Cidr c;
    Cidr::parse(t, &c);
    s.add(c);
  }
  return s;
}();

TEST_CASE("resolveClientIp ignores forwarding headers from an untrusted peer",
          "[proxy][identify]") {
  HeaderMap h;
  h.add("X-Forwarded-For", "1.2.3.4");
  h.add("X-Real-IP", "5.6.7.8");
  CHECK(resolve("203.0.113.9", h, kTrusted) == "203.0.113.9");
  CHECK(resolve("2001:db8::9", h, kTrusted) == "2001:db8::9");
  // No trusted proxies configured at all: headers are never believed.
  CHECK(resolve("10.0.0.1", h, CidrSet{}) == "10.0.0.1");
}

TEST_CASE("resolveClientIp walks X-Forwarded-For right to left past trusted hops",
          "[proxy][identify]") {
  SECTION("single entry") {
    HeaderMap h;
    h.add("X-Forwarded-For", "1.2.3.4");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("trusted hops on the right are skipped") {
    HeaderMap h;
    h.add("X-Forwarded-For", "1.2.3.4, 10.0.0.2, 192.168.1.7");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("addresses the client made up on the left are not believed") {
    HeaderMap h;
    h.add("X-Forwarded-For", "6.6.6.6, 7.7.7.7, 1.2.3.4, 10.0.0.2");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("a client claiming a trusted address still ends at the first untrusted one") {
    HeaderMap h;
    h.add("X-Forwarded-For", "10.9.9.9, 1.2.3.4, 10.0.0.2");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("every entry trusted: the leftmost one") {
    HeaderMap h;
    h.add("X-Forwarded-For", "10.0.0.5, 10.0.0.2");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "10.0.0.5");
  }
  SECTION("spaces and empty items") {
    HeaderMap h;
    h.add("x-forwarded-for", "  1.2.3.4 ,, \t10.0.0.2 ,");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("a header name in any case") {
    HeaderMap h;
    h.add("X-FORWARDED-FOR", "1.2.3.4");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("an empty field keeps the peer") {
    HeaderMap h;
    h.add("X-Forwarded-For", "");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "10.0.0.1");
  }
}

TEST_CASE("resolveClientIp treats several X-Forwarded-For fields as one list",
          "[proxy][identify]") {
  SECTION("the last field is the rightmost part of the list") {
    HeaderMap h;
    h.add("X-Forwarded-For", "6.6.6.6");
    h.add("Accept", "*/*");
    h.add("X-Forwarded-For", "1.2.3.4, 10.0.0.2");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("the walk continues into the previous field") {
    HeaderMap h;
    h.add("X-Forwarded-For", "6.6.6.6, 1.2.3.4");
    h.add("X-Forwarded-For", "10.0.0.3");
    h.add("x-forwarded-for", "192.168.1.1, 10.0.0.2");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("removed fields do not count") {
    HeaderMap h;
    h.add("X-Forwarded-For", "1.2.3.4");
    h.add("X-Forwarded-For", "6.6.6.6");
    h.remove(1);
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
}

TEST_CASE("resolveClientIp: many client-sent X-Forwarded-For fields cannot hide the proxy's one",
          "[proxy][identify][regression]") {
  // Only the first 8 fields used to be read, so a client sending 8 forged fields made the
  // trusted balancer's own (last) field invisible and chose its own address.
  HeaderMap h;
  for (int i = 0; i < 12; i++) h.add("X-Forwarded-For", "6.6.6." + std::to_string(i));
  h.add("X-Forwarded-For", "1.2.3.4");  // appended by the trusted balancer
  CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");

  HeaderMap h2;
  for (int i = 0; i < 12; i++) h2.add("X-Forwarded-For", "6.6.6." + std::to_string(i));
  h2.add("X-Forwarded-For", "1.2.3.4, 10.0.0.7");
  h2.add("X-Forwarded-For", "192.168.1.3");
  CHECK(resolve("10.0.0.1", h2, kTrusted) == "1.2.3.4");
}

TEST_CASE("resolveClientIp stops at garbage in X-Forwarded-For", "[proxy][identify]") {
  SECTION("garbage right after the peer: the peer") {
    HeaderMap h;
    h.add("X-Forwarded-For", "1.2.3.4, unknown");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "10.0.0.1");
  }
  SECTION("garbage behind trusted hops: the last trusted hop") {
    HeaderMap h;
    h.add("X-Forwarded-For", "1.2.3.4, not-an-ip, 10.0.0.2");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "10.0.0.2");
  }
  SECTION("odd shapes are garbage") {
    for (const char* bad : {"1.2.3.4:5678", "1.2.3", "1.2.3.4.5", "::g", "_", "1.2.3.4 5.6.7.8",
                            "300.1.1.1"}) {
      CAPTURE(bad);
      HeaderMap h;
      h.add("X-Forwarded-For", bad);
      CHECK(resolve("10.0.0.1", h, kTrusted) == "10.0.0.1");
    }
  }
  SECTION("garbage on the left after an untrusted address is never reached") {
    HeaderMap h;
    h.add("X-Forwarded-For", "junk, 1.2.3.4");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
}

TEST_CASE("resolveClientIp falls back to X-Real-IP without X-Forwarded-For", "[proxy][identify]") {
  SECTION("used from a trusted peer") {
    HeaderMap h;
    h.add("X-Real-IP", " 1.2.3.4 ");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("any case") {
    HeaderMap h;
    h.add("x-real-ip", "2001:db8::5");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "2001:db8::5");
  }
  SECTION("garbage keeps the peer") {
    HeaderMap h;
    h.add("X-Real-IP", "garbage");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "10.0.0.1");
  }
  SECTION("X-Forwarded-For wins when both are present") {
    HeaderMap h;
    h.add("X-Real-IP", "5.6.7.8");
    h.add("X-Forwarded-For", "1.2.3.4");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("ignored from an untrusted peer") {
    HeaderMap h;
    h.add("X-Real-IP", "1.2.3.4");
    CHECK(resolve("8.8.8.8", h, kTrusted) == "8.8.8.8");
  }
  SECTION("neither header: the peer") {
    HeaderMap h;
    h.add("Host", "x");
    CHECK(resolve("10.0.0.1", h, kTrusted) == "10.0.0.1");
  }
}

TEST_CASE("resolveClientIp handles IPv6 peers and entries", "[proxy][identify]") {
  SECTION("v6 trusted peer, v4 client") {
    HeaderMap h;
    h.add("X-Forwarded-For", "1.2.3.4");
    CHECK(resolve("::1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("v6 client behind v6 trusted hops") {
    HeaderMap h;
    h.add("X-Forwarded-For", "2001:db8::77, fd00::2, fd12:3456::1");
    CHECK(resolve("fd00::1", h, kTrusted) == "2001:db8::77");
  }
  SECTION("bracketed v6 entries") {
    HeaderMap h;
    h.add("X-Forwarded-For", "[2001:db8::77], [fd00::2]");
    CHECK(resolve("::1", h, kTrusted) == "2001:db8::77");
  }
  SECTION("a v4-mapped peer is matched against v4 ranges") {
    HeaderMap h;
    h.add("X-Forwarded-For", "1.2.3.4");
    CHECK(resolve("::ffff:10.0.0.1", h, kTrusted) == "1.2.3.4");
  }
  SECTION("an untrusted v6 peer") {
    HeaderMap h;
    h.add("X-Forwarded-For", "1.2.3.4");
    CHECK(resolve("2001:db8::1", h, kTrusted) == "2001:db8::1");
  }
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("isValidRequestId accepts 1..128 token characters", "[proxy][identify]") {
  CHECK(isValidRequestId("a"));
  CHECK(isValidRequestId("0f8c2b7e-1d2a-4b3c-9e5f-abcdef012345"));
  CHECK(isValidRequestId("req_42.trace:7/shard+x=="));
  CHECK(isValidRequestId(std::string(128, 'x')));
  CHECK_FALSE(isValidRequestId(""));
  CHECK_FALSE(isValidRequestId(std::string(129, 'x')));
  CHECK_FALSE(isValidRequestId("has space"));
  CHECK_FALSE(isValidRequestId("inject\r\nX-Evil: 1"));
  CHECK_FALSE(isValidRequestId("tab\there"));
  CHECK_FALSE(isValidRequestId("quote\""));
  CHECK_FALSE(isValidRequestId("semi;colon"));
  CHECK_FALSE(isValidRequestId("<script>"));
  CHECK_FALSE(isValidRequestId("caf\xc3\xa9"));
  CHECK_FALSE(isValidRequestId(std::string("nul\0x", 5)));
}

const std::string kTraceId = "4bf92f3577b34da6a3ce929d0e0e4736";
const std::string kParentId = "00f067aa0ba902b7";

TEST_CASE("isValidTraceparent accepts W3C version 00", "[proxy][identify][trace]") {
  CHECK(isValidTraceparent("00-" + kTraceId + "-" + kParentId + "-01"));
  CHECK(isValidTraceparent("00-" + kTraceId + "-" + kParentId + "-00"));
  CHECK(isValidTraceparent("00-" + kTraceId + "-" + kParentId + "-ff"));
  CHECK(isValidTraceparent("00-00000000000000000000000000000001-0000000000000001-01"));
}

TEST_CASE("isValidTraceparent refuses all-zero ids", "[proxy][identify][trace]") {
  CHECK_FALSE(isValidTraceparent("00-" + std::string(32, '0') + "-" + kParentId + "-01"));
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId + "-" + std::string(16, '0') + "-01"));
}

TEST_CASE("isValidTraceparent refuses uppercase hex", "[proxy][identify][trace]") {
  CHECK_FALSE(isValidTraceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-" + kParentId + "-01"));
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId + "-00F067AA0BA902B7-01"));
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId + "-" + kParentId + "-0A"));
  CHECK_FALSE(isValidTraceparent("0A-" + kTraceId + "-" + kParentId + "-01"));
}

TEST_CASE("isValidTraceparent refuses version ff and non-hex", "[proxy][identify][trace]") {
  CHECK_FALSE(isValidTraceparent("ff-" + kTraceId + "-" + kParentId + "-01"));
  CHECK_FALSE(isValidTraceparent("0g-" + kTraceId + "-" + kParentId + "-01"));
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId + "-" + kParentId + "-0x"));
  CHECK_FALSE(isValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e473g-" + kParentId + "-01"));
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId + "-00f067aa0ba902bz-01"));
}

TEST_CASE("isValidTraceparent refuses wrong lengths and separators", "[proxy][identify][trace]") {
  const std::string good = "00-" + kTraceId + "-" + kParentId + "-01";
  REQUIRE(good.size() == 55);
  CHECK_FALSE(isValidTraceparent(""));
  CHECK_FALSE(isValidTraceparent(good.substr(0, 54)));
  CHECK_FALSE(isValidTraceparent(good + "0"));
  CHECK_FALSE(isValidTraceparent(good + "-extra"));  // version 00 is exactly 55 characters
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId + "0-" + kParentId.substr(1) + "-01"));
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId.substr(1) + "-0" + kParentId + "-01"));
  CHECK_FALSE(isValidTraceparent("00_" + kTraceId + "-" + kParentId + "-01"));
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId + "_" + kParentId + "-01"));
  CHECK_FALSE(isValidTraceparent("00-" + kTraceId + "-" + kParentId + "_01"));
  CHECK_FALSE(isValidTraceparent("000-" + kTraceId + "-" + kParentId + "-1"));
}

TEST_CASE("isValidTraceparent: a future version may grow, but only after a dash",
          "[proxy][identify][trace][regression]") {
  // W3C Trace Context, versioning of traceparent: a higher version is read with the 00 layout
  // and, when the header is longer than 55 characters, the next one must be '-'.
  CHECK(isValidTraceparent("01-" + kTraceId + "-" + kParentId + "-01"));
  CHECK(isValidTraceparent("cc-" + kTraceId + "-" + kParentId + "-01-what-the-future-holds"));
  CHECK_FALSE(isValidTraceparent("cc-" + kTraceId + "-" + kParentId + "-01what"));
  CHECK_FALSE(isValidTraceparent("cc-" + kTraceId + "-" + kParentId + "-010"));
}

TEST_CASE("newTraceparent makes valid, distinct version-00 headers", "[proxy][identify][trace]") {
  std::set<std::string> seen;
  for (int i = 0; i < 100; i++) {
    std::string tp = newTraceparent();
    CAPTURE(tp);
    REQUIRE(tp.size() == 55);
    CHECK(tp.substr(0, 3) == "00-");
    CHECK(tp[35] == '-');
    CHECK(tp[52] == '-');
    CHECK(tp.substr(52) == "-01");  // sampled
    for (size_t k : {size_t(3), size_t(36)}) {
      size_t len = k == 3 ? 32 : 16;
      for (char c : tp.substr(k, len)) CHECK(((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')));
    }
    CHECK(isValidTraceparent(tp));
    seen.insert(tp.substr(3, 32));
  }
  CHECK(seen.size() == 100);
}

}  // namespace
}  // namespace sluice
