#include "core/ip.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

namespace sluice {
namespace {

IpAddress ip(const char* text) {
  IpAddress a;
  REQUIRE(IpAddress::parse(text, &a));
  return a;
}

Cidr cidr(const char* text) {
  Cidr c;
  REQUIRE(Cidr::parse(text, &c));
  return c;
}

TEST_CASE("IpAddress parses IPv4 as mapped IPv6", "[core][ip]") {
  IpAddress a = ip("192.0.2.7");
  CHECK(a.v4);
  CHECK(a.bytes[10] == 0xff);
  CHECK(a.bytes[11] == 0xff);
  CHECK(a.bytes[12] == 192);
  CHECK(a.bytes[15] == 7);
  CHECK(a.toString() == "192.0.2.7");
  // The same address written in mapped form compares equal.
  CHECK(ip("::ffff:192.0.2.7") == a);
  CHECK(ip("::ffff:192.0.2.7").v4);
}

TEST_CASE("IpAddress parses IPv6, bracketed or not", "[core][ip]") {
  IpAddress a = ip("2001:db8::1");
  CHECK_FALSE(a.v4);
  CHECK(a.toString() == "2001:db8::1");
  CHECK(ip("[2001:db8::1]") == a);
  CHECK(ip("2001:0db8:0:0:0:0:0:1") == a);
  CHECK(ip("::1").toString() == "::1");
}

TEST_CASE("IpAddress refuses malformed input", "[core][ip]") {
  IpAddress a;
  CHECK_FALSE(IpAddress::parse("", &a));
  CHECK_FALSE(IpAddress::parse("1.2.3", &a));
  CHECK_FALSE(IpAddress::parse("1.2.3.256", &a));
  CHECK_FALSE(IpAddress::parse("1.2.3.4:80", &a));
  CHECK_FALSE(IpAddress::parse("localhost", &a));
  CHECK_FALSE(IpAddress::parse("[::1", &a));
  CHECK_FALSE(IpAddress::parse(" 1.2.3.4", &a));
  CHECK_FALSE(IpAddress::parse(std::string(100, '1'), &a));
}

TEST_CASE("IpAddress refuses an embedded NUL", "[core][ip]") {
  // Regression: inet_pton stopped at the NUL and accepted the prefix.
  IpAddress a;
  CHECK_FALSE(IpAddress::parse(std::string("1.2.3.4\0junk", 12), &a));
  CHECK_FALSE(IpAddress::parse(std::string("::1\0", 4), &a));
}

TEST_CASE("IpAddress::fromSockaddr reads both families and the port", "[core][ip]") {
  sockaddr_in s4{};
  s4.sin_family = AF_INET;
  s4.sin_port = htons(8080);
  inet_pton(AF_INET, "10.1.2.3", &s4.sin_addr);
  IpAddress a;
  uint16_t port = 0;
  REQUIRE(IpAddress::fromSockaddr(reinterpret_cast<sockaddr*>(&s4), &a, &port));
  CHECK(a == ip("10.1.2.3"));
  CHECK(a.v4);
  CHECK(port == 8080);

  sockaddr_in6 s6{};
  s6.sin6_family = AF_INET6;
  s6.sin6_port = htons(443);
  inet_pton(AF_INET6, "2001:db8::5", &s6.sin6_addr);
  REQUIRE(IpAddress::fromSockaddr(reinterpret_cast<sockaddr*>(&s6), &a, &port));
  CHECK(a == ip("2001:db8::5"));
  CHECK_FALSE(a.v4);
  CHECK(port == 443);

  // A dual-stack socket reports IPv4 peers as mapped addresses.
  inet_pton(AF_INET6, "::ffff:10.1.2.3", &s6.sin6_addr);
  REQUIRE(IpAddress::fromSockaddr(reinterpret_cast<sockaddr*>(&s6), &a, nullptr));
  CHECK(a.v4);
  CHECK(a == ip("10.1.2.3"));

  sockaddr other{};
  other.sa_family = AF_UNIX;
  CHECK_FALSE(IpAddress::fromSockaddr(&other, &a));
}

TEST_CASE("Cidr matches IPv4 prefixes", "[core][ip]") {
  Cidr c = cidr("10.0.0.0/8");
  CHECK(c.prefix == 96 + 8);
  CHECK(c.contains(ip("10.255.1.2")));
  CHECK_FALSE(c.contains(ip("11.0.0.1")));
  CHECK_FALSE(c.contains(ip("::a00:1")));  // 10.0.0.1 as a plain (non-mapped) v6 address

  Cidr odd = cidr("192.168.1.128/25");
  CHECK(odd.contains(ip("192.168.1.200")));
  CHECK_FALSE(odd.contains(ip("192.168.1.127")));

  // The base is normalised, so host bits in the text do not matter.
  CHECK(cidr("10.1.2.3/8").contains(ip("10.9.9.9")));

  CHECK(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
  CHECK_FALSE(cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
}

TEST_CASE("Cidr bare address is a full-length prefix", "[core][ip]") {
  Cidr c = cidr("127.0.0.1");
  CHECK(c.prefix == 128);
  CHECK(c.contains(ip("127.0.0.1")));
  CHECK_FALSE(c.contains(ip("127.0.0.2")));
  CHECK(cidr("::1").contains(ip("::1")));
  CHECK(cidr("::1").prefix == 128);
}

TEST_CASE("Cidr matches IPv6 prefixes", "[core][ip]") {
  Cidr c = cidr("2001:db8::/32");
  CHECK(c.contains(ip("2001:db8:ffff::1")));
  CHECK_FALSE(c.contains(ip("2001:db9::1")));
  CHECK(cidr("::1/128").contains(ip("::1")));
  CHECK_FALSE(cidr("::1/128").contains(ip("::2")));
  CHECK(cidr("fe80::/10").contains(ip("febf::1")));
  CHECK_FALSE(cidr("fe80::/10").contains(ip("fec0::1")));
  // ::/0 covers everything, IPv4 (stored mapped) included.
  CHECK(cidr("::/0").contains(ip("1.2.3.4")));
}

TEST_CASE("Cidr prefix of a v6-notation mapped address counts 128 bits", "[core][ip]") {
  // Regression: "::ffff:0:0/96" was refused (its base is mapped, so the limit was 32 bits).
  Cidr all_mapped = cidr("::ffff:0:0/96");
  CHECK(all_mapped.prefix == 96);
  CHECK(all_mapped.contains(ip("8.8.8.8")));
  CHECK_FALSE(all_mapped.contains(ip("2001:db8::1")));
  Cidr c = cidr("::ffff:10.0.0.0/104");
  CHECK(c.contains(ip("10.2.3.4")));
  CHECK_FALSE(c.contains(ip("11.2.3.4")));
}

TEST_CASE("Cidr refuses malformed input", "[core][ip]") {
  Cidr c;
  CHECK_FALSE(Cidr::parse("", &c));
  CHECK_FALSE(Cidr::parse("10.0.0.0/", &c));
  CHECK_FALSE(Cidr::parse("10.0.0.0/33", &c));
  CHECK_FALSE(Cidr::parse("10.0.0.0/-1", &c));
  CHECK_FALSE(Cidr::parse("10.0.0.0/8x", &c));
  CHECK_FALSE(Cidr::parse("10.0.0.0/0008", &c));
  CHECK_FALSE(Cidr::parse("::/129", &c));
  CHECK_FALSE(Cidr::parse("10.0.0/8", &c));
  CHECK_FALSE(Cidr::parse("example.com/8", &c));
}

TEST_CASE("CidrSet contains any member", "[core][ip]") {
  CidrSet set;
  CHECK(set.empty());
  CHECK_FALSE(set.contains(ip("127.0.0.1")));
  set.add(cidr("127.0.0.1/32"));
  set.add(cidr("::1/128"));
  CHECK(set.size() == 2);
  CHECK(set.contains(ip("127.0.0.1")));
  CHECK(set.contains(ip("::1")));
  CHECK_FALSE(set.contains(ip("10.0.0.1")));
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

TEST_CASE("IPv4 text equals inet_ntop's for every octet value and random addresses", "[core][ip]") {
  auto viaLibc = [](const IpAddress& a) {
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a.bytes[12], buf, sizeof(buf));
    return std::string(buf);
  };
  IpAddress a;
  REQUIRE(IpAddress::parse("0.0.0.0", &a));
  for (int v = 0; v < 256; ++v) {
    for (int i = 12; i < 16; ++i) a.bytes[i] = static_cast<uint8_t>(v);
    REQUIRE(a.toString() == viaLibc(a));
  }
  uint64_t x = 0x9E3779B97F4A7C15ULL;
  for (int n = 0; n < 100000; ++n) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(&a.bytes[12], &x, 4);
    REQUIRE(a.toString() == viaLibc(a));
  }
  REQUIRE(IpAddress::parse("255.255.255.255", &a));
  CHECK(a.toString() == "255.255.255.255");
}

}  // namespace
}  // namespace sluice
