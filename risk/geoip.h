#pragma once
// GeoIpDatabase: one MaxMind DB file (GeoLite2/GeoIP2 Country, ASN, ISP or Anonymous-IP) opened
// with libmaxminddb and memory-mapped. A lookup fills whichever fields that file carries, so the
// engine merges a country, an ASN and an anonymous-IP database into one GeoIpRecord.
//
// Thread safety: libmaxminddb lookups on an open database only read the mapping, so one
// GeoIpDatabase serves every worker. A reload opens a new one and swaps the pointer; the old file
// stays mapped until its last request ends (shared_ptr).
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "core/ip.h"

struct MMDB_s;

namespace sluice::risk {

struct GeoIpRecord {
  char country[3] = {0, 0, 0};  // ISO 3166-1 alpha-2, empty when unknown
  uint32_t asn = 0;             // 0 when unknown
  // Points into the database mapping: valid while the GeoIpDatabase that produced it lives.
  std::string_view asnOrg;
  bool isAnonymous = false;
  bool isVpn = false;
  bool isHosting = false;
  bool isPublicProxy = false;
  bool isResidentialProxy = false;
  bool isTor = false;

  std::string_view countryCode() const { return {country, country[0] ? size_t{2} : size_t{0}}; }
  // Fills the fields `other` has and this record lacks.
  void merge(const GeoIpRecord& other);
};

class GeoIpDatabase;
using GeoIpDatabasePtr = std::shared_ptr<const GeoIpDatabase>;

class GeoIpDatabase {
 public:
  // Opens and validates `path`. On failure returns null and sets *error to a sentence naming the
  // file and the cause (missing, unreadable, not a MaxMind DB, corrupt).
  static GeoIpDatabasePtr open(const std::string& path, std::string* error);
  ~GeoIpDatabase();
  GeoIpDatabase(const GeoIpDatabase&) = delete;
  GeoIpDatabase& operator=(const GeoIpDatabase&) = delete;

  // Fills `out` with what this database knows about `ip`; false when the address is not in it
  // (or the lookup failed, which for a validated database means a corrupt record).
  // Only the fields this database's type can hold are looked up (see fields()); `allFields`
  // walks every path whatever the type (tests compare the two). `prefixBits`, when given,
  // receives the length of the network the answer holds for (found or not), in the address's
  // own family (0-32 for IPv4, 0-128 for IPv6): every address in that network gets the same
  // answer, which is what lets callers memoise a whole block.
  bool lookup(const IpAddress& ip, GeoIpRecord* out, bool allFields = false,
              int* prefixBits = nullptr) const;

  // Which record paths lookup() walks, from the metadata database_type: MaxMind's documented
  // schemas for their exact type names; every path for any other type.
  enum Field : uint8_t { kCountry = 1, kAsn = 2, kAnonymousFlags = 4 };
  uint8_t fields() const { return fields_; }
  static uint8_t fieldsFor(std::string_view databaseType);

  const std::string& path() const { return path_; }
  // The metadata database_type, e.g. "GeoLite2-ASN".
  const std::string& databaseType() const { return type_; }

 private:
  GeoIpDatabase() = default;
  std::unique_ptr<MMDB_s> mmdb_;
  std::string path_;
  std::string type_;
  uint8_t fields_ = kCountry | kAsn;
};

}  // namespace sluice::risk
