#include "proxy/server/explain_log.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <thread>

namespace sluice {
namespace {

ExplainRecord record(uint64_t ip, uint64_t device, uint64_t member, int64_t at, int score) {
  ExplainRecord r;
  r.keys[0] = ip;
  r.keys[1] = device;
  r.keys[2] = member;
  r.at = at;
  r.wall = 1700000000;
  r.score = static_cast<int16_t>(score);
  r.request_score = static_cast<int16_t>(score - 5);
  r.action = 2;
  r.count = 2;
  std::strcpy(r.top[0].name, "ua.automation");
  r.top[0].points = 30;
  std::strcpy(r.top[1].name, "beh.regular_timing");
  r.top[1].points = -4;
  return r;
}

TEST_CASE("explain log: one record serves each entity it names", "[explain]") {
  ExplainLog log;
  log.append(record(11, 22, 33, 100, 40));
  for (int kind = 0; kind < 3; ++kind) {
    ExplainRecord out;
    REQUIRE(log.find(kind, static_cast<uint64_t>(11 * (kind + 1)), &out));
    CHECK(out.score == 40);
    CHECK(out.request_score == 35);
    CHECK(out.action == 2);
    CHECK(out.wall == 1700000000u);
    REQUIRE(out.count == 2);
    CHECK(std::string(out.top[0].name) == "ua.automation");
    CHECK(out.top[0].points == 30);
    CHECK(std::string(out.top[1].name) == "beh.regular_timing");
    CHECK(out.top[1].points == -4);
  }
  ExplainRecord out;
  CHECK_FALSE(log.find(0, 22, &out));  // a device's key is not an IP's
  CHECK_FALSE(log.find(1, 0, &out));   // 0 = "no entity", never a match
  CHECK_FALSE(log.find(3, 11, &out));
}

TEST_CASE("explain log: an entity not due in a decision keeps its earlier record", "[explain]") {
  ExplainLog log;
  log.append(record(11, 22, 33, 100, 40));
  log.append(record(0, 22, 0, 200, 60));  // only the device was due
  ExplainRecord out;
  REQUIRE(log.find(1, 22, &out));
  CHECK(out.score == 60);
  REQUIRE(log.find(0, 11, &out));
  CHECK(out.score == 40);
  REQUIRE(log.find(2, 33, &out));
  CHECK(out.score == 40);
}

TEST_CASE("explain log: the newest record wins, across threads", "[explain]") {
  ExplainLog log;
  log.append(record(11, 22, 33, 300, 70));
  std::thread other([&] { log.append(record(11, 0, 0, 200, 50)); });
  other.join();
  ExplainRecord out;
  REQUIRE(log.find(0, 11, &out));
  CHECK(out.score == 70);  // this thread's is newer, though the other ring was written last
  std::thread later([&] { log.append(record(11, 0, 0, 400, 90)); });
  later.join();
  REQUIRE(log.find(0, 11, &out));
  CHECK(out.score == 90);
}

TEST_CASE("explain log: a worker keeps its last records, staged or in its ring", "[explain]") {
  ExplainLog log;
  constexpr uint64_t kStage = ExplainLog::kStageRecords, kRing = ExplainLog::kRingRecords;
  const uint64_t n = kRing + kStage + 10;
  for (uint64_t i = 1; i <= n; ++i) log.append(record(1000 + i, 0, 0, static_cast<int64_t>(i), 30));
  // The stage moves to the ring when a record finds it full: (n - 1) / kStage times.
  const uint64_t moved = (n - 1) / kStage * kStage;
  const uint64_t lost = moved - kRing;
  REQUIRE(lost == kStage);
  ExplainRecord out;
  for (uint64_t i = 1; i <= lost; ++i) CHECK_FALSE(log.find(0, 1000 + i, &out));  // overwritten
  for (uint64_t i : {lost + 1, moved, moved + 1, n}) {  // the ring's oldest and newest, the stage's
    INFO("record " << i);
    REQUIRE(log.find(0, 1000 + i, &out));
    CHECK(out.at == static_cast<int64_t>(i));
  }
}

TEST_CASE("explain log: a staged record is newer than a streamed one", "[explain]") {
  ExplainLog log;
  for (uint64_t i = 1; i <= ExplainLog::kStageRecords + 1; ++i)
    log.append(record(7, 0, 0, static_cast<int64_t>(i), static_cast<int>(i)));
  ExplainRecord out;
  REQUIRE(log.find(0, 7, &out));
  CHECK(out.at == static_cast<int64_t>(ExplainLog::kStageRecords + 1));
}

TEST_CASE("explain log: logs built one after another do not share a thread's ring", "[explain]") {
  // A thread's ring is told by the log's id: a log built at the address of a destroyed one must
  // get a ring of its own, not write into the freed one (ASan would report it).
  for (int round = 0; round < 3; ++round) {
    ExplainLog log;
    ExplainRecord out;
    CHECK_FALSE(log.find(0, 11, &out));
    log.append(record(11, 0, 0, 100 + round, 30 + round));
    REQUIRE(log.find(0, 11, &out));
    CHECK(out.score == 30 + round);
  }
}

}  // namespace
}  // namespace sluice
