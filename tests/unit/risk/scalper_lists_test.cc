#include "risk/scalper_lists.h"

#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>

#include "core/hash.h"

namespace sluice::risk {
namespace {

IpAddress ip(const char* s) {
  IpAddress a;
  REQUIRE(IpAddress::parse(s, &a));
  return a;
}

ScalperList parse(ListKind kind, std::string_view text, bool allow = false, int points = 100) {
  ListSource src{"test", kind, "", allow, points};
  ScalperList l;
  std::string err;
  REQUIRE(ScalperLists::parseInto(src, text, "lists/test.txt", &l, &err));
  return l;
}

TEST_CASE("IP lists: addresses, CIDRs, comments, v6", "[risk][lists]") {
  auto l = parse(ListKind::kIp, "# scalpers\n203.0.113.7\n198.51.100.0/24  # farm\n\n2001:db8::/32\r\n");
  CHECK(l.entries == 3);
  auto lists = ScalperLists::fromLists({std::move(l)});
  auto q = [&](const char* a) {
    IpAddress x = ip(a);
    ListQuery query;
    query.ip = &x;
    return lists->match(query);
  };
  CHECK(q("203.0.113.7").pointsByKind[0] == 100);
  CHECK(q("203.0.113.8").matchedLists == 0);
  CHECK(q("198.51.100.255").matchedLists == 1);
  CHECK(q("198.51.101.0").matchedLists == 0);
  CHECK(q("2001:db8:1::5").matchedLists == 1);
  CHECK(q("2001:db9::5").matchedLists == 0);
}

TEST_CASE("CidrMatcher boundaries", "[risk][lists]") {
  CidrMatcher m;
  Cidr c;
  REQUIRE(Cidr::parse("10.1.2.128/25", &c));
  m.add(c);
  REQUIRE(Cidr::parse("0.0.0.0/0", &c));
  CidrMatcher all;
  all.add(c);
  CHECK(m.contains(ip("10.1.2.128")));
  CHECK(m.contains(ip("10.1.2.255")));
  CHECK_FALSE(m.contains(ip("10.1.2.127")));
  CHECK(all.contains(ip("8.8.8.8")));
}

TEST_CASE("id lists and allow lists", "[risk][lists]") {
  auto members = parse(ListKind::kMember, "m-1\nm-2\n", false, 80);
  auto devices = parse(ListKind::kDevice, "dev-9\n");
  auto vip = parse(ListKind::kMember, "m-vip\n", true);
  auto lists = ScalperLists::fromLists({std::move(members), std::move(devices), std::move(vip)});
  ListQuery q;
  q.memberId = "m-2";
  auto m = lists->match(q);
  CHECK(m.pointsByKind[static_cast<int>(ListKind::kMember)] == 80);
  CHECK_FALSE(m.allowed);
  q.memberId = "dev-9";  // a device id presented as a member id does not match
  CHECK(lists->match(q).matchedLists == 0);
  q.memberId = "";
  q.deviceId = "dev-9";
  CHECK(lists->match(q).pointsByKind[static_cast<int>(ListKind::kDevice)] == 100);
  q.memberId = "m-vip";
  auto v = lists->match(q);
  CHECK(v.allowed);
  REQUIRE(v.firstAllow);
  CHECK(v.firstAllow->name == "test");
}

TEST_CASE("bad list lines report file:line:col", "[risk][lists]") {
  ListSource src{"ips", ListKind::kIp, "", false, 100};
  ScalperList l;
  std::string err;
  CHECK_FALSE(ScalperLists::parseInto(src, "10.0.0.1\n\n   300.1.2.3\n", "ips.txt", &l, &err));
  CHECK(err.rfind("ips.txt:3:4: ", 0) == 0);
  err.clear();
  CHECK_FALSE(ScalperLists::parseInto(src, "10.0.0.0/33", "ips.txt", &l, &err));
  CHECK(err.rfind("ips.txt:1:1: ", 0) == 0);
  ListSource ids{"m", ListKind::kMember, "", false, 100};
  err.clear();
  CHECK_FALSE(ScalperLists::parseInto(ids, "ok\n  two words\n", "m.txt", &l, &err));
  CHECK(err.rfind("m.txt:2:3: ", 0) == 0);
  err.clear();
  CHECK_FALSE(ScalperLists::parseInto(ids, std::string(300, 'a'), "m.txt", &l, &err));
  CHECK(err.find("256") != std::string::npos);
}

TEST_CASE("lists load from files; a missing file is an error", "[risk][lists]") {
  const std::string path = "/tmp/sluice-risk-list-" + std::to_string(::getpid()) + ".txt";
  {
    std::ofstream out(path);
    out << "# addresses\nabc123\n";
  }
  std::string err;
  auto lists = ScalperLists::load({{"addr", ListKind::kAddress, path, false, 60}}, &err);
  REQUIRE(lists);
  ListQuery q;
  q.addressHash = "abc123";
  CHECK(lists->match(q).pointsByKind[static_cast<int>(ListKind::kAddress)] == 60);
  std::remove(path.c_str());
  CHECK_FALSE(ScalperLists::load({{"addr", ListKind::kAddress, path, false, 60}}, &err));
  CHECK(err.find(path) != std::string::npos);
  ListKind k;
  CHECK(parseListKind("fingerprint", &k));
  CHECK(k == ListKind::kFingerprint);
  CHECK_FALSE(parseListKind("cidr", &k));
}

}  // namespace
}  // namespace sluice::risk

namespace sluice::risk {
namespace {

TEST_CASE("FlatHashSet: membership through growth, collisions and the zero key", "[risk][lists]") {
  FlatHashSet s;
  CHECK_FALSE(s.contains(42));
  CHECK(s.empty());
  std::vector<uint64_t> keys;
  // Keys sharing low bits collide in the same probe run; add well-mixed ones too.
  for (uint64_t i = 0; i < 300; ++i) keys.push_back(i << 20);
  for (uint64_t i = 1; i < 3000; ++i) keys.push_back(i * 0x9E3779B97F4A7C15ULL);
  for (size_t i = 0; i < keys.size(); ++i) {
    s.insert(keys[i]);
    if (i % 500 == 0)
      for (size_t j = 0; j <= i; ++j) REQUIRE(s.contains(keys[j]));
  }
  s.insert(keys[5]);  // duplicate: no change
  CHECK(s.size() == keys.size());
  CHECK(s.capacity() >= 2 * s.size());
  for (uint64_t k : keys) CHECK(s.contains(k));
  for (uint64_t i = 0; i < 2000; ++i) CHECK_FALSE(s.contains((i << 20) + 7));
  // 0 (used for empty slots internally) and 1 are distinct keys only in that 0 maps to 1.
  FlatHashSet z;
  z.insert(0);
  CHECK(z.contains(0));
  CHECK(z.count(0) == 1);
  CHECK_FALSE(z.contains(2));
}

}  // namespace
}  // namespace sluice::risk

namespace sluice::risk {
namespace {

// The CIDR key as first written: the address masked byte by byte to the prefix, then the prefix
// as a 17th byte, hashed. ListEntry::key and the matcher's probes must keep this value.
uint64_t referenceMaskedKey(const IpAddress& a, int prefix) {
  uint8_t b[17];
  std::memcpy(b, a.bytes.data(), 16);
  for (int i = 0; i < 16; ++i) {
    const int bits = prefix - i * 8;
    if (bits >= 8) continue;
    b[i] &= bits <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - bits));
  }
  b[16] = static_cast<uint8_t>(prefix);
  return hash64(std::string_view(reinterpret_cast<const char*>(b), sizeof b));
}

TEST_CASE("CIDR keys and matching equal the byte-wise definition, on random addresses",
          "[risk][lists]") {
  std::mt19937_64 rng(17);
  for (int round = 0; round < 4000; ++round) {
    IpAddress base;
    const bool v4 = rng() % 2;
    std::string text;
    int maxPrefix = 128;
    if (v4) {
      text = std::to_string(rng() % 256) + "." + std::to_string(rng() % 256) + "." +
             std::to_string(rng() % 256) + "." + std::to_string(rng() % 256);
      maxPrefix = 32;
    } else {
      char buf[64];
      snprintf(buf, sizeof buf, "%x:%x:%x:%x:%x:%x:%x:%x", unsigned(rng() % 65536),
               unsigned(rng() % 65536), unsigned(rng() % 65536), unsigned(rng() % 65536),
               unsigned(rng() % 65536), unsigned(rng() % 65536), unsigned(rng() % 65536),
               unsigned(rng() % 65536));
      text = buf;
    }
    const int prefix = static_cast<int>(rng() % (maxPrefix + 1));
    const std::string entry = text + "/" + std::to_string(prefix);
    INFO(entry);
    ListEntry e;
    std::string message;
    REQUIRE(parseListEntry(ListKind::kIp, entry, &e, &message));
    REQUIRE(e.key == referenceMaskedKey(e.cidr.base, e.cidr.prefix));
    CidrMatcher m;
    m.add(e.cidr);
    // The base itself, a neighbour differing in one random bit, and a random address.
    IpAddress probe = e.cidr.base;
    REQUIRE(m.contains(probe));
    const int bit = v4 ? 96 + static_cast<int>(rng() % 32) : static_cast<int>(rng() % 128);
    probe.bytes[bit / 8] ^= static_cast<uint8_t>(0x80 >> (bit % 8));
    REQUIRE(m.contains(probe) == e.cidr.contains(probe));
    IpAddress other = e.cidr.base;
    for (int i = v4 ? 12 : 0; i < 16; ++i) other.bytes[i] = static_cast<uint8_t>(rng());
    REQUIRE(m.contains(other) == e.cidr.contains(other));
  }
}

}  // namespace
}  // namespace sluice::risk
