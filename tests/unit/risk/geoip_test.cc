#include "risk/geoip.h"

#include <catch2/catch.hpp>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <thread>
#include <vector>

namespace sluice::risk {
namespace {

std::string dataPath(const char* file) {
  return std::string(SLUICE_SOURCE_DIR) + "/tests/data/geoip/" + file;
}

IpAddress ip(const char* s) {
  IpAddress a;
  REQUIRE(IpAddress::parse(s, &a));
  return a;
}

TEST_CASE("GeoIP ASN database: known answers", "[risk][geoip]") {
  std::string err;
  auto db = GeoIpDatabase::open(dataPath("GeoLite2-ASN-Test.mmdb"), &err);
  REQUIRE(db);
  CHECK(db->databaseType() == "GeoLite2-ASN");
  GeoIpRecord r;
  REQUIRE(db->lookup(ip("1.128.0.1"), &r));
  CHECK(r.asn == 1221);
  CHECK(r.asnOrg == "Telstra Pty Ltd");
  GeoIpRecord g;
  REQUIRE(db->lookup(ip("12.81.92.5"), &g));
  CHECK(g.asn == 7018);
  GeoIpRecord none;
  CHECK_FALSE(db->lookup(ip("10.0.0.1"), &none));
  CHECK(none.asn == 0);
}

TEST_CASE("GeoIP country database: known answer", "[risk][geoip]") {
  std::string err;
  auto db = GeoIpDatabase::open(dataPath("GeoIP2-Country-Test.mmdb"), &err);
  REQUIRE(db);
  GeoIpRecord r;
  REQUIRE(db->lookup(ip("81.2.69.160"), &r));
  CHECK(r.countryCode() == "GB");
}

TEST_CASE("GeoIP anonymous-IP database: flags", "[risk][geoip]") {
  std::string err;
  auto db = GeoIpDatabase::open(dataPath("GeoIP2-Anonymous-IP-Test.mmdb"), &err);
  REQUIRE(db);
  GeoIpRecord r;
  REQUIRE(db->lookup(ip("81.2.69.1"), &r));
  CHECK(r.isHosting);
  CHECK(r.isPublicProxy);
  CHECK(r.isTor);
  CHECK(r.isVpn);
  CHECK(r.isResidentialProxy);
  GeoIpRecord h;
  REQUIRE(db->lookup(ip("71.160.223.9"), &h));
  CHECK(h.isHosting);
  CHECK_FALSE(h.isTor);
  CHECK_FALSE(h.isVpn);
  GeoIpRecord v6;
  REQUIRE(db->lookup(ip("abcd:1000::1"), &v6));
  CHECK(v6.isPublicProxy);
}

TEST_CASE("GeoIP records merge across databases", "[risk][geoip]") {
  GeoIpRecord a, b;
  a.asn = 5;
  b.country[0] = 'G';
  b.country[1] = 'B';
  b.asn = 9;
  b.isTor = true;
  a.merge(b);
  CHECK(a.asn == 5);
  CHECK(a.countryCode() == "GB");
  CHECK(a.isTor);
}

TEST_CASE("GeoIP missing or corrupt files are clear errors", "[risk][geoip]") {
  std::string err;
  CHECK_FALSE(GeoIpDatabase::open("/nonexistent/x.mmdb", &err));
  CHECK(err.find("/nonexistent/x.mmdb") != std::string::npos);
  CHECK(err.find("No such file") != std::string::npos);

  const std::string bad = std::string(SLUICE_SOURCE_DIR) + "/build-risk-geoip-corrupt.mmdb";
  const std::string tmp = "/tmp/sluice-risk-corrupt-" + std::to_string(::getpid()) + ".mmdb";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << std::string(4096, '\x55');
  }
  err.clear();
  CHECK_FALSE(GeoIpDatabase::open(tmp, &err));
  CHECK(err.find(tmp) != std::string::npos);
  // A real database cut in half.
  {
    std::ifstream in(dataPath("GeoLite2-ASN-Test.mmdb"), std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << all.substr(0, all.size() / 2);
  }
  err.clear();
  CHECK_FALSE(GeoIpDatabase::open(tmp, &err));
  CHECK_FALSE(err.empty());
  std::remove(tmp.c_str());
  (void)bad;
}

TEST_CASE("GeoIP lookups from several threads agree", "[risk][geoip]") {
  std::string err;
  auto db = GeoIpDatabase::open(dataPath("GeoLite2-ASN-Test.mmdb"), &err);
  REQUIRE(db);
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  // Parsed here: Catch2's assertions (inside ip()) are not thread-safe, and TSan said so.
  const IpAddress addr = ip("1.128.0.1");
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        GeoIpRecord r;
        if (!db->lookup(addr, &r) || r.asn != 1221) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(wrong == 0);
}

}  // namespace
}  // namespace sluice::risk
