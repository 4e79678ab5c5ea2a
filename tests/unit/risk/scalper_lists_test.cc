#include "risk/scalper_lists.h"

#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdio>
#include <fstream>

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
