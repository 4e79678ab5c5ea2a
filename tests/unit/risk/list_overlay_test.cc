#include "risk/list_overlay.h"

#include <catch2/catch.hpp>

#include <thread>

namespace sluice::risk {
namespace {

IpAddress ip(const char* s) {
  IpAddress a;
  REQUIRE(IpAddress::parse(s, &a));
  return a;
}

ListEntry entry(ListKind kind, std::string_view text) {
  ListEntry e;
  std::string msg;
  REQUIRE(parseListEntry(kind, text, &e, &msg));
  return e;
}

ScalperListsPtr configured() {
  std::vector<ScalperList> lists(3);
  lists[0].name = "scalper_ips";
  lists[0].kind = ListKind::kIp;
  lists[0].points = 80;
  lists[1].name = "farm_devices";
  lists[1].kind = ListKind::kDevice;
  lists[1].points = 90;
  lists[2].name = "vip";
  lists[2].kind = ListKind::kMember;
  lists[2].allow = true;
  return ScalperLists::fromLists(std::move(lists));
}

TEST_CASE("list entries: canonical text and errors", "[risk][lists][overlay]") {
  CHECK(entry(ListKind::kIp, "10.1.2.3/8").canonical == "10.0.0.0/8");
  CHECK(entry(ListKind::kIp, "203.0.113.7").canonical == "203.0.113.7");
  CHECK(entry(ListKind::kIp, "2001:db8::1/32").canonical == "2001:db8::/32");
  CHECK(entry(ListKind::kDevice, "dev-1").canonical == "dev-1");
  ListEntry e;
  std::string msg;
  CHECK_FALSE(parseListEntry(ListKind::kIp, "300.1.1.1", &e, &msg));
  CHECK(msg == "not an IP address or CIDR: '300.1.1.1'");
  CHECK_FALSE(parseListEntry(ListKind::kDevice, "a b", &e, &msg));
  CHECK(msg == "entry contains whitespace or a control character");
  CHECK_FALSE(parseListEntry(ListKind::kMember, "", &e, &msg));
  CHECK_FALSE(parseListEntry(ListKind::kMember, std::string(257, 'x'), &e, &msg));
}

TEST_CASE("overlay entries match as part of the configured list", "[risk][lists][overlay]") {
  auto lists = configured();
  ListOverlay overlay;
  CHECK(overlay.current(1000) == nullptr);
  IpAddress a = ip("198.51.100.9");
  ListQuery q;
  q.ip = &a;
  q.deviceId = "farm-7";
  q.memberId = "m-1";
  CHECK(lists->match(q, overlay.current(1000)).matchedLists == 0);

  CHECK(overlay.add("scalper_ips", ListKind::kIp, {entry(ListKind::kIp, "198.51.100.0/24")}, 0, 1000) == 1);
  auto m = lists->match(q, overlay.current(1000));
  CHECK(m.matchedLists == 1);
  CHECK(m.pointsByKind[static_cast<int>(ListKind::kIp)] == 80);

  overlay.add("farm_devices", ListKind::kDevice, {entry(ListKind::kDevice, "farm-7")}, 0, 1000);
  overlay.add("vip", ListKind::kMember, {entry(ListKind::kMember, "m-1")}, 0, 1000);
  m = lists->match(q, overlay.current(1000));
  CHECK(m.matchedLists == 0b111);
  CHECK(m.pointsByKind[static_cast<int>(ListKind::kDevice)] == 90);
  CHECK(m.allowed);

  // An entry recorded under a list name with another kind does not match that list.
  ListOverlay wrongKind;
  wrongKind.add("scalper_ips", ListKind::kDevice, {entry(ListKind::kDevice, "farm-7")}, 0, 1000);
  CHECK(lists->match(q, wrongKind.current(1000)).matchedLists == 0);

  CHECK(overlay.remove("farm_devices", {"farm-7", "absent"}) == 1);
  CHECK(lists->match(q, overlay.current(1000)).matchedLists == 0b101);
}

TEST_CASE("overlay entries expire", "[risk][lists][overlay]") {
  auto lists = configured();
  ListOverlay overlay;
  IpAddress a = ip("203.0.113.5");
  ListQuery q;
  q.ip = &a;
  overlay.add("scalper_ips", ListKind::kIp, {entry(ListKind::kIp, "203.0.113.5")}, 5000, 1000);
  CHECK(overlay.count("scalper_ips", 1000) == 1);
  CHECK(lists->match(q, overlay.current(4999)).matchedLists == 1);
  CHECK(lists->match(q, overlay.current(5000)).matchedLists == 0);
  CHECK(overlay.count("scalper_ips", 5000) == 0);
  CHECK(overlay.entries("scalper_ips", 5000).empty());
  // Re-adding an expired entry counts as new; re-adding a live one refreshes its expiry.
  CHECK(overlay.add("scalper_ips", ListKind::kIp, {entry(ListKind::kIp, "203.0.113.5")}, 9000, 6000) == 1);
  CHECK(overlay.add("scalper_ips", ListKind::kIp, {entry(ListKind::kIp, "203.0.113.5")}, 0, 7000) == 0);
  CHECK(lists->match(q, overlay.current(100000)).matchedLists == 1);
}

TEST_CASE("overlay snapshots are seen by other threads after a change", "[risk][lists][overlay]") {
  auto lists = configured();
  ListOverlay overlay;
  IpAddress a = ip("192.0.2.1");
  ListQuery q;
  q.ip = &a;
  bool before = true, after = false;
  std::thread t1([&] { before = lists->match(q, overlay.current(1)).matchedLists != 0; });
  t1.join();
  overlay.add("scalper_ips", ListKind::kIp, {entry(ListKind::kIp, "192.0.2.1")}, 0, 1);
  std::thread t2([&] { after = lists->match(q, overlay.current(1)).matchedLists != 0; });
  t2.join();
  CHECK_FALSE(before);
  CHECK(after);
}

TEST_CASE("overlay replace swaps a whole list", "[risk][lists][overlay]") {
  ListOverlay overlay;
  overlay.add("farm_devices", ListKind::kDevice, {entry(ListKind::kDevice, "a"), entry(ListKind::kDevice, "b")}, 0, 10);
  std::vector<ListOverlay::Entry> fresh(1);
  fresh[0].parsed = entry(ListKind::kDevice, "c");
  fresh[0].addedAtMs = 5;
  overlay.replace("farm_devices", ListKind::kDevice, fresh, 10);
  auto es = overlay.entries("farm_devices", 10);
  REQUIRE(es.size() == 1);
  CHECK(es[0].parsed.canonical == "c");
  CHECK(overlay.contains("farm_devices", "c", 10));
  CHECK_FALSE(overlay.contains("farm_devices", "a", 10));
}

}  // namespace
}  // namespace sluice::risk
