#include "proxy/server/proxy_protocol.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace sluice {
namespace {

using Status = ProxyProtocolResult::Status;

ProxyProtocolResult parse(const std::string& s) { return parseProxyProtocol(s.data(), s.size()); }

// ---------------------------------------------------------------------------------------------
// v1

TEST_CASE("PROXY v1 TCP4", "[proxy][proxy_protocol]") {
  const std::string line = "PROXY TCP4 192.0.2.1 10.0.0.1 56324 443\r\n";
  auto r = parse(line + "GET / HTTP/1.1\r\n\r\n");
  REQUIRE(r.status == Status::kDone);
  CHECK(r.consumed == line.size());
  CHECK(r.has_address);
  CHECK(r.source.v4);
  CHECK(r.source.toString() == "192.0.2.1");
  CHECK(r.source_port == 56324);
}

TEST_CASE("PROXY v1 TCP6", "[proxy][proxy_protocol]") {
  const std::string line = "PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n";
  auto r = parse(line);
  REQUIRE(r.status == Status::kDone);
  CHECK(r.consumed == line.size());
  CHECK(r.has_address);
  CHECK_FALSE(r.source.v4);
  CHECK(r.source.toString() == "2001:db8::1");
  CHECK(r.source_port == 65535);
}

TEST_CASE("PROXY v1 TCP6 with v4-mapped addresses, as HAProxy sends from a dual-stack bind",
          "[proxy][proxy_protocol][regression]") {
  // A v4 client reaching a balancer listening on "::" is announced as TCP6 ::ffff:a.b.c.d.
  // The family check compared the parsed address's v4 flag, so these lines were refused and
  // every such connection dropped.
  const std::string line = "PROXY TCP6 ::ffff:192.0.2.1 ::ffff:10.0.0.1 4000 443\r\n";
  auto r = parse(line);
  REQUIRE(r.status == Status::kDone);
  CHECK(r.consumed == line.size());
  CHECK(r.has_address);
  CHECK(r.source.toString() == "192.0.2.1");
  CHECK(r.source_port == 4000);
}

TEST_CASE("PROXY v1 longest possible line (107 bytes with CRLF) is accepted",
          "[proxy][proxy_protocol]") {
  const std::string addr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
  const std::string line = "PROXY TCP6 " + addr + " " + addr + " 65535 65535\r\n";
  REQUIRE(line.size() == 104);
  auto r = parse(line);
  REQUIRE(r.status == Status::kDone);
  CHECK(r.consumed == 104);
  CHECK(r.source_port == 65535);
}

TEST_CASE("PROXY v1 UNKNOWN keeps the TCP peer", "[proxy][proxy_protocol]") {
  SECTION("bare") {
    const std::string line = "PROXY UNKNOWN\r\n";
    auto r = parse(line + "GET");
    REQUIRE(r.status == Status::kDone);
    CHECK(r.consumed == line.size());
    CHECK_FALSE(r.has_address);
  }
  SECTION("with addresses, which are ignored") {
    const std::string line = "PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n";
    auto r = parse(line);
    REQUIRE(r.status == Status::kDone);
    CHECK(r.consumed == line.size());
    CHECK_FALSE(r.has_address);
  }
}

TEST_CASE("PROXY v1 is incomplete at every proper prefix", "[proxy][proxy_protocol]") {
  for (const std::string& line : std::initializer_list<std::string>{
           "PROXY TCP4 192.0.2.1 10.0.0.1 56324 443\r\n",
           "PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n", "PROXY UNKNOWN\r\n"}) {
    for (size_t n = 0; n < line.size(); n++) {
      CAPTURE(line, n);
      auto r = parseProxyProtocol(line.data(), n);
      CHECK(r.status == Status::kIncomplete);
      CHECK(r.consumed == 0);
    }
    CHECK(parse(line).status == Status::kDone);
  }
}

TEST_CASE("PROXY v1 malformed lines are errors", "[proxy][proxy_protocol]") {
  auto bad = [](const std::string& s) {
    CAPTURE(s);
    auto r = parse(s);
    CHECK(r.status == Status::kError);
    CHECK(r.error != nullptr);
    CHECK(std::string(r.error).size() > 0);
    CHECK_FALSE(r.has_address);
  };
  SECTION("missing CR") { bad("PROXY TCP4 192.0.2.1 10.0.0.1 1 2\n"); }
  SECTION("too long without LF") {
    std::string s = "PROXY TCP4 " + std::string(120, '1');
    bad(s);
    CHECK(parseProxyProtocol(s.data(), 106).status == Status::kIncomplete);
    bad(s.substr(0, 107));
  }
  SECTION("LF beyond 107 bytes") { bad("PROXY TCP4 " + std::string(100, ' ') + "\r\n"); }
  SECTION("bad addresses") {
    bad("PROXY TCP4 192.0.2 10.0.0.1 1 2\r\n");
    bad("PROXY TCP4 192.0.2.1 10.0.0.256 1 2\r\n");
    bad("PROXY TCP4 example.com 10.0.0.1 1 2\r\n");
    bad("PROXY TCP6 2001:db8:::1 2001:db8::2 1 2\r\n");
  }
  SECTION("family mismatch") {
    bad("PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n");
    bad("PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n");
    bad("PROXY TCP4 192.0.2.1 2001:db8::2 1 2\r\n");
    bad("PROXY TCP6 2001:db8::1 10.0.0.1 1 2\r\n");
  }
  SECTION("bad ports") {
    bad("PROXY TCP4 192.0.2.1 10.0.0.1 65536 443\r\n");
    bad("PROXY TCP4 192.0.2.1 10.0.0.1 80 99999\r\n");
    bad("PROXY TCP4 192.0.2.1 10.0.0.1 -1 443\r\n");
    bad("PROXY TCP4 192.0.2.1 10.0.0.1 8o 443\r\n");
    bad("PROXY TCP4 192.0.2.1 10.0.0.1 123456 443\r\n");
  }
  SECTION("wrong field count or spacing") {
    bad("PROXY TCP4 192.0.2.1 10.0.0.1 1\r\n");
    bad("PROXY TCP4 192.0.2.1 10.0.0.1 1 2 3\r\n");
    bad("PROXY TCP4  192.0.2.1 10.0.0.1 1 2\r\n");
    bad("PROXY \r\n");
    bad("PROXY\r\n");
  }
  SECTION("unknown protocol") {
    bad("PROXY UDP4 192.0.2.1 10.0.0.1 1 2\r\n");
    bad("PROXY tcp4 192.0.2.1 10.0.0.1 1 2\r\n");
  }
}

// ---------------------------------------------------------------------------------------------
// v2

const uint8_t kSig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

std::string v2(uint8_t ver_cmd, uint8_t fam, const std::vector<uint8_t>& body,
               size_t declared_len = SIZE_MAX) {
  std::string s(reinterpret_cast<const char*>(kSig), 12);
  size_t len = declared_len == SIZE_MAX ? body.size() : declared_len;
  s.push_back(static_cast<char>(ver_cmd));
  s.push_back(static_cast<char>(fam));
  s.push_back(static_cast<char>(len >> 8));
  s.push_back(static_cast<char>(len & 0xff));
  s.append(reinterpret_cast<const char*>(body.data()), body.size());
  return s;
}

std::vector<uint8_t> inetBlock(std::vector<uint8_t> src, std::vector<uint8_t> dst, uint16_t sport,
                               uint16_t dport) {
  std::vector<uint8_t> b = src;
  b.insert(b.end(), dst.begin(), dst.end());
  b.push_back(static_cast<uint8_t>(sport >> 8));
  b.push_back(static_cast<uint8_t>(sport & 0xff));
  b.push_back(static_cast<uint8_t>(dport >> 8));
  b.push_back(static_cast<uint8_t>(dport & 0xff));
  return b;
}

TEST_CASE("PROXY v2 PROXY over IPv4", "[proxy][proxy_protocol][v2]") {
  std::string hdr = v2(0x21, 0x11, inetBlock({192, 0, 2, 1}, {10, 0, 0, 1}, 51234, 443));
  REQUIRE(hdr.size() == 28);
  auto r = parse(hdr + "GET / HTTP/1.1\r\n");
  REQUIRE(r.status == Status::kDone);
  CHECK(r.consumed == 28);
  CHECK(r.has_address);
  CHECK(r.source.v4);
  CHECK(r.source.toString() == "192.0.2.1");
  CHECK(r.source_port == 51234);
}

TEST_CASE("PROXY v2 PROXY over UDP/IPv4 also carries the address", "[proxy][proxy_protocol][v2]") {
  auto r = parse(v2(0x21, 0x12, inetBlock({198, 51, 100, 7}, {10, 0, 0, 1}, 53, 53)));
  REQUIRE(r.status == Status::kDone);
  CHECK(r.has_address);
  CHECK(r.source.toString() == "198.51.100.7");
  CHECK(r.source_port == 53);
}

TEST_CASE("PROXY v2 PROXY over IPv6", "[proxy][proxy_protocol][v2]") {
  std::vector<uint8_t> src = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42};
  std::vector<uint8_t> dst = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01};
  std::string hdr = v2(0x21, 0x21, inetBlock(src, dst, 1, 8443));
  REQUIRE(hdr.size() == 16 + 36);
  auto r = parse(hdr);
  REQUIRE(r.status == Status::kDone);
  CHECK(r.consumed == 52);
  CHECK(r.has_address);
  CHECK_FALSE(r.source.v4);
  CHECK(r.source.toString() == "2001:db8::42");
  CHECK(r.source_port == 1);

  SECTION("a v4-mapped source reads as IPv4") {
    std::vector<uint8_t> mapped = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 9};
    auto m = parse(v2(0x21, 0x21, inetBlock(mapped, dst, 2, 3)));
    REQUIRE(m.status == Status::kDone);
    CHECK(m.source.v4);
    CHECK(m.source.toString() == "192.0.2.9");
  }
}

TEST_CASE("PROXY v2 consumes TLVs after the addresses", "[proxy][proxy_protocol][v2]") {
  auto body = inetBlock({192, 0, 2, 1}, {10, 0, 0, 1}, 1000, 443);
  // PP2_TYPE_AUTHORITY "shop" and a NOOP TLV with 3 bytes of padding.
  for (uint8_t b : std::initializer_list<uint8_t>{0x02, 0x00, 0x04, 's', 'h', 'o', 'p', 0x04, 0x00,
                                                  0x03, 0, 0, 0})
    body.push_back(b);
  std::string hdr = v2(0x21, 0x11, body);
  auto r = parse(hdr + "GET / HTTP/1.1\r\n");
  REQUIRE(r.status == Status::kDone);
  CHECK(r.consumed == hdr.size());
  CHECK(r.consumed == 16 + 12 + 13);
  CHECK(r.source.toString() == "192.0.2.1");
  CHECK(r.source_port == 1000);
}

TEST_CASE("PROXY v2 LOCAL keeps the TCP peer", "[proxy][proxy_protocol][v2]") {
  SECTION("without an address block") {
    auto r = parse(v2(0x20, 0x00, {}) + "GET");
    REQUIRE(r.status == Status::kDone);
    CHECK(r.consumed == 16);
    CHECK_FALSE(r.has_address);
  }
  SECTION("with an address block, which is skipped") {
    std::string hdr = v2(0x20, 0x11, inetBlock({192, 0, 2, 1}, {10, 0, 0, 1}, 1, 2));
    auto r = parse(hdr);
    REQUIRE(r.status == Status::kDone);
    CHECK(r.consumed == hdr.size());
    CHECK_FALSE(r.has_address);
  }
}

TEST_CASE("PROXY v2 other families keep the TCP peer", "[proxy][proxy_protocol][v2]") {
  SECTION("UNSPEC") {
    auto r = parse(v2(0x21, 0x00, {}));
    REQUIRE(r.status == Status::kDone);
    CHECK_FALSE(r.has_address);
  }
  SECTION("UNIX stream") {
    std::vector<uint8_t> unix_block(216, 0);
    auto r = parse(v2(0x21, 0x31, unix_block));
    REQUIRE(r.status == Status::kDone);
    CHECK(r.consumed == 16 + 216);
    CHECK_FALSE(r.has_address);
  }
}

TEST_CASE("PROXY v2 truncated input is incomplete", "[proxy][proxy_protocol][v2]") {
  std::string hdr = v2(0x21, 0x11, inetBlock({192, 0, 2, 1}, {10, 0, 0, 1}, 51234, 443));
  for (size_t n = 0; n < hdr.size(); n++) {
    CAPTURE(n);
    auto r = parseProxyProtocol(hdr.data(), n);
    CHECK(r.status == Status::kIncomplete);
    CHECK(r.consumed == 0);
  }
  // A length that promises more than has arrived.
  std::string promised = v2(0x21, 0x11, inetBlock({192, 0, 2, 1}, {10, 0, 0, 1}, 1, 2), 100);
  CHECK(parse(promised).status == Status::kIncomplete);
}

TEST_CASE("PROXY v2 malformed headers are errors", "[proxy][proxy_protocol][v2]") {
  auto block = inetBlock({192, 0, 2, 1}, {10, 0, 0, 1}, 1, 2);
  SECTION("version 1 in the binary form") {
    CHECK(parse(v2(0x11, 0x11, block)).status == Status::kError);
  }
  SECTION("version 3") { CHECK(parse(v2(0x31, 0x11, block)).status == Status::kError); }
  SECTION("unknown command") { CHECK(parse(v2(0x22, 0x11, block)).status == Status::kError); }
  SECTION("IPv4 block too short") {
    auto r = parse(v2(0x21, 0x11, std::vector<uint8_t>(block.begin(), block.begin() + 8)));
    CHECK(r.status == Status::kError);
  }
  SECTION("IPv6 block too short") {
    CHECK(parse(v2(0x21, 0x21, std::vector<uint8_t>(20, 1))).status == Status::kError);
  }
  SECTION("declared length over the limit") {
    CHECK(parse(v2(0x21, 0x11, block, 4000)).status == Status::kError);
  }
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("Neither PROXY v1 nor v2 is an error", "[proxy][proxy_protocol]") {
  for (const std::string& s :
       {std::string("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), std::string("PROXZ TCP4\r\n"),
        std::string("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), std::string("\r\n\r\nX"),
        std::string("\r\n\r\n\0\r\nQUIX\n", 12), std::string("\x16\x03\x01\x02\x00", 5)}) {
    CAPTURE(s);
    auto r = parse(s);
    CHECK(r.status == Status::kError);
    CHECK_FALSE(r.has_address);
  }
  // Too little to tell yet.
  CHECK(parseProxyProtocol("", 0).status == Status::kIncomplete);
  CHECK(parse("PROX").status == Status::kIncomplete);
  CHECK(parse(std::string("\r\n\r\n\0", 5)).status == Status::kIncomplete);
  // One wrong byte is enough to decide.
  CHECK(parse("G").status == Status::kError);
  CHECK(parse("PX").status == Status::kError);
}

}  // namespace
}  // namespace sluice
