// conf/policies/item_page.lua against canned sub-requests.
#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>

#include "tests/unit/lua/test_host.h"

namespace sluice::lua {
namespace {

using test::TestRequestHost;

struct ItemPage {
  test::Fixture f;
  TestRequestHost host;

  explicit ItemPage(const std::string& config = "") {
    std::ifstream in(std::string(SLUICE_SOURCE_DIR) + "/conf/policies/item_page.lua");
    std::string src((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(!src.empty());
    f.build({{"item_page.lua", src}}, {{"item_page", config}});
    INFO(f.errorText());
    REQUIRE(f.errors.empty());
    host.path_ = "/api/items/42/page";
    host.canned["items/api/items/42"] = TestRequestHost::ok(200, R"({"id":42,"title":"Kettle"})");
    host.canned["prices/api/items/42/price"] = TestRequestHost::ok(200, R"({"amount":1999,"currency":"EUR"})");
    host.canned["stock/api/items/42/stock"] = TestRequestHost::ok(200, R"({"available":3})");
  }
  RunResult run() {
    auto req = f.vm->newRequest(host, "r1");
    RunResult r = req->run(Phase::kAggregate);
    while (r.status == RunStatus::kYielded) {
      host.completeAll();
      r = req->resume();
    }
    return r;
  }
};

TEST_CASE("item_page merges item, price and stock", "[lua]") {
  ItemPage p;
  RunResult r = p.run();
  INFO(r.error);
  REQUIRE(r.status == RunStatus::kResponded);
  CHECK(p.host.resp_status == 200);
  // Key order of a JSON object is unspecified: check the pieces.
  const std::string& b = p.host.resp_body;
  CHECK(b.find(R"("item":{)") != std::string::npos);
  CHECK(b.find(R"("title":"Kettle")") != std::string::npos);
  CHECK(b.find(R"("amount":1999)") != std::string::npos);
  CHECK(b.find(R"("available":3)") != std::string::npos);
  CHECK(b.find(R"("partial":false)") != std::string::npos);
  CHECK(b.find(R"("missing":[])") != std::string::npos);
  REQUIRE(p.host.started.size() == 3);
  CHECK(p.host.started[0].pool == "items");
  CHECK(p.host.started[1].path == "/api/items/42/price");
  CHECK(p.host.started[2].pool == "stock");
  CHECK(p.host.started[0].timeout == 300 * kMillis);
  CHECK(p.host.started[0].headers[0].value == "req-1");
}

TEST_CASE("item_page: optional part timing out becomes null plus a flag", "[lua]") {
  ItemPage p;
  p.host.mode = TestRequestHost::Mode::kDeferred;
  p.host.canned["stock/api/items/42/stock"] = TestRequestHost::err("timeout");
  RunResult r = p.run();
  INFO(r.error);
  REQUIRE(r.status == RunStatus::kResponded);
  CHECK(p.host.resp_status == 200);
  CHECK(p.host.resp_body.find(R"("stock":null)") != std::string::npos);
  CHECK(p.host.resp_body.find(R"("partial":true)") != std::string::npos);
  CHECK(p.host.resp_body.find(R"("missing":["stock"])") != std::string::npos);
}

TEST_CASE("item_page: optional part with a 500 or bad JSON is missing too", "[lua]") {
  ItemPage p;
  p.host.canned["prices/api/items/42/price"] = TestRequestHost::ok(500, "oops");
  p.host.canned["stock/api/items/42/stock"] = TestRequestHost::ok(200, "{not json");
  RunResult r = p.run();
  REQUIRE(r.status == RunStatus::kResponded);
  CHECK(p.host.resp_status == 200);
  CHECK(p.host.resp_body.find(R"("missing":["price","stock"])") != std::string::npos);
}

TEST_CASE("item_page: required part failing gives 502 with the request id", "[lua]") {
  ItemPage p;
  p.host.canned["items/api/items/42"] = TestRequestHost::err("connect");
  RunResult r = p.run();
  REQUIRE(r.status == RunStatus::kResponded);
  CHECK(p.host.resp_status == 502);
  CHECK(p.host.resp_body.find(R"("request_id":"req-1")") != std::string::npos);
  CHECK(p.host.resp_body.find("item") != std::string::npos);
}

TEST_CASE("item_page: config makes stock required and renames pools", "[lua]") {
  ItemPage p(R"({"optional":["price"],"stock_pool":"inventory","timeout_ms":50})");
  p.host.canned["inventory/api/items/42/stock"] = TestRequestHost::err("timeout");
  RunResult r = p.run();
  REQUIRE(r.status == RunStatus::kResponded);
  CHECK(p.host.resp_status == 502);
  CHECK(p.host.started[2].pool == "inventory");
  CHECK(p.host.started[2].timeout == 50 * kMillis);
}

TEST_CASE("item_page: bad paths and methods", "[lua]") {
  ItemPage p;
  p.host.path_ = "/api/items/../../admin/page";
  REQUIRE(p.run().status == RunStatus::kResponded);
  CHECK(p.host.resp_status == 404);
  CHECK(p.host.started.empty());
  ItemPage q;
  q.host.method_ = "POST";
  REQUIRE(q.run().status == RunStatus::kResponded);
  CHECK(q.host.resp_status == 405);
}

TEST_CASE("item_page: client abort mid-fan-out cancels the rest", "[lua]") {
  ItemPage p;
  p.host.mode = TestRequestHost::Mode::kDeferred;
  auto req = p.f.vm->newRequest(p.host, "r1");
  REQUIRE(req->run(Phase::kAggregate).status == RunStatus::kYielded);
  p.host.complete(1);
  req->cancel();
  CHECK(p.host.cancelled.size() == 2);
  CHECK(p.host.responses == 0);
}

TEST_CASE("item_page: config errors are reported with the attachment location", "[lua]") {
  std::ifstream in(std::string(SLUICE_SOURCE_DIR) + "/conf/policies/item_page.lua");
  std::string src((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Validator v;
  auto report = v.validate(test::makeBundle({{"item_page.lua", src}},
                                            {{"item_page", R"({"timeout_ms":0,"optional":["price"]})"}}));
  REQUIRE_FALSE(report.ok);
  CHECK(report.summary() ==
        "sluice.yaml:10: route 'r1' policy 'item_page': config field 'timeout_ms': must be at least 1");
  report = v.validate(test::makeBundle({{"item_page.lua", src}}, {{"item_page", R"({"optional":["colour"]})"}}));
  CHECK(report.summary().find("field 'optional[1]': must be one of item, price, stock") != std::string::npos);
}

}  // namespace
}  // namespace sluice::lua
