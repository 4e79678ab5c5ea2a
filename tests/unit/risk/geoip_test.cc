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

bool sameRecord(const GeoIpRecord& a, const GeoIpRecord& b) {
  return a.countryCode() == b.countryCode() && a.asn == b.asn && a.asnOrg == b.asnOrg &&
         a.isAnonymous == b.isAnonymous && a.isVpn == b.isVpn && a.isHosting == b.isHosting &&
         a.isPublicProxy == b.isPublicProxy && a.isResidentialProxy == b.isResidentialProxy &&
         a.isTor == b.isTor;
}

TEST_CASE("GeoIP lookups walk only their type's paths, with the same answers", "[risk][geoip]") {
  CHECK(GeoIpDatabase::fieldsFor("GeoIP2-Country") == GeoIpDatabase::kCountry);
  CHECK(GeoIpDatabase::fieldsFor("GeoLite2-City") == GeoIpDatabase::kCountry);
  CHECK(GeoIpDatabase::fieldsFor("GeoLite2-ASN") == GeoIpDatabase::kAsn);
  CHECK(GeoIpDatabase::fieldsFor("GeoIP2-Anonymous-IP") == GeoIpDatabase::kAnonymousFlags);
  CHECK(GeoIpDatabase::fieldsFor("Acme-Geo") == (GeoIpDatabase::kCountry | GeoIpDatabase::kAsn));
  CHECK(GeoIpDatabase::fieldsFor("Acme-Anonymous") == 7);
  // Every test database, over a spread of addresses: the typed lookup finds what walking every
  // path finds.
  for (const char* file : {"GeoIP2-Country-Test.mmdb", "GeoLite2-Country-Test.mmdb",
                           "GeoLite2-City-Test.mmdb", "GeoLite2-ASN-Test.mmdb",
                           "GeoIP2-ISP-Test.mmdb", "GeoIP2-Anonymous-IP-Test.mmdb"}) {
    std::string err;
    auto db = GeoIpDatabase::open(dataPath(file), &err);
    REQUIRE(db);
    INFO(file);
    int found = 0;
    std::vector<std::string> addrs = {"2.125.160.216", "81.2.69.142",  "81.2.69.160",
                                      "216.160.83.56", "89.160.20.112", "89.160.20.128",
                                      "67.43.156.1",   "175.16.199.1",  "2001:218::1",
                                      "2001:480::1",   "2a02:d280::1",  "::81.2.69.160"};
    for (int a = 0; a < 256; ++a) {
      for (int b : {0, 1, 2, 10, 69, 81, 92, 125, 128, 156, 160, 236}) {
        for (int c : {0, 1, 69, 160}) {
          addrs.push_back(std::to_string(a) + "." + std::to_string(b) + "." + std::to_string(c) + ".1");
        }
      }
    }
    for (const std::string& s : addrs) {
      IpAddress addr;
      REQUIRE(IpAddress::parse(s, &addr));
      GeoIpRecord typed, all;
      const bool t = db->lookup(addr, &typed);
      const bool w = db->lookup(addr, &all, true);
      REQUIRE(t == w);
      if (!t) continue;
      ++found;
      INFO(s);
      CHECK(sameRecord(typed, all));
    }
    CHECK(found > 0);
  }
}

// The memo in RiskEngine stores one answer for a whole network on the strength of prefixBits:
// every address inside the reported network must get the same answer as the one looked up.
TEST_CASE("GeoIP lookup: every address in the reported network gets the same answer",
          "[risk][geoip]") {
  const char* files[] = {"GeoIP2-Country-Test.mmdb", "GeoLite2-ASN-Test.mmdb",
                         "GeoIP2-Anonymous-IP-Test.mmdb", "GeoLite2-City-Test.mmdb"};
  uint64_t seed = 0x9E3779B97F4A7C15ULL;
  auto next = [&seed] {
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
  };
  for (const char* file : files) {
    INFO(file);
    std::string err;
    auto db = GeoIpDatabase::open(dataPath(file), &err);
    REQUIRE(db);
    std::vector<std::string> addrs = {"81.2.69.142", "81.2.69.160", "81.2.69.1", "10.0.0.1",
                                      "1.128.0.1",   "2.125.160.216", "89.160.20.112",
                                      "2001:218::1", "2a02:d280::1",  "abcd:1000::1", "::1"};
    for (int a = 0; a < 256; a += 3) addrs.push_back(std::to_string(a) + ".2.69.161");
    int wide = 0;  // networks as wide as the memo's blocks: some must be checked
    for (const std::string& s : addrs) {
      const IpAddress addr = ip(s.c_str());
      GeoIpRecord first;
      int bits = -1;
      const bool found = db->lookup(addr, &first, true, &bits);
      INFO(s << " network bits " << bits);
      REQUIRE(bits >= 0);
      REQUIRE(bits <= (addr.v4 ? 32 : 128));
      if (bits <= (addr.v4 ? 24 : 48)) ++wide;
      // Random addresses sharing the first `bits` bits (in the family's own numbering).
      const int offset = addr.v4 ? 96 : 0;
      for (int trial = 0; trial < 64; ++trial) {
        IpAddress other = addr;
        for (int bit = offset + bits; bit < 128; ++bit) {
          const uint8_t mask = static_cast<uint8_t>(0x80 >> (bit % 8));
          if (next() & 1) other.bytes[bit / 8] ^= mask;
        }
        GeoIpRecord again;
        int otherBits = -1;
        CHECK(db->lookup(other, &again, true, &otherBits) == found);
        CHECK(otherBits == bits);
        if (found) CHECK(sameRecord(first, again));
      }
    }
    CHECK(wide > 0);
  }
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
