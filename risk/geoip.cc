#include "risk/geoip.h"

#include <arpa/inet.h>
#include <maxminddb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace sluice::risk {
namespace {

const MMDB_entry_data_s* getValue(MMDB_entry_s* entry, MMDB_entry_data_s* data,
                                  const char* const* path) {
  if (MMDB_aget_value(entry, data, path) != MMDB_SUCCESS || !data->has_data) return nullptr;
  return data;
}

bool getBool(MMDB_entry_s* entry, const char* key) {
  const char* path[] = {key, nullptr};
  MMDB_entry_data_s data;
  const auto* d = getValue(entry, &data, path);
  return d != nullptr && d->type == MMDB_DATA_TYPE_BOOLEAN && d->boolean;
}

}  // namespace

void GeoIpRecord::merge(const GeoIpRecord& o) {
  if (!country[0]) std::memcpy(country, o.country, sizeof country);
  if (asn == 0) asn = o.asn;
  if (asnOrg.empty()) asnOrg = o.asnOrg;
  isAnonymous |= o.isAnonymous;
  isVpn |= o.isVpn;
  isHosting |= o.isHosting;
  isPublicProxy |= o.isPublicProxy;
  isResidentialProxy |= o.isResidentialProxy;
  isTor |= o.isTor;
}

GeoIpDatabasePtr GeoIpDatabase::open(const std::string& path, std::string* error) {
  // libmaxminddb reports only "error opening the specified MaxMind DB file"; say why.
  if (::access(path.c_str(), R_OK) != 0) {
    *error = "GeoIP database " + path + ": cannot open: " + strerror(errno);
    return nullptr;
  }
  std::shared_ptr<GeoIpDatabase> db(new GeoIpDatabase());
  db->mmdb_ = std::make_unique<MMDB_s>();
  const int status = MMDB_open(path.c_str(), MMDB_MODE_MMAP, db->mmdb_.get());
  if (status != MMDB_SUCCESS) {
    std::string cause = MMDB_strerror(status);
    if (status == MMDB_IO_ERROR) cause += std::string(" (") + strerror(errno) + ")";
    *error = "GeoIP database " + path + ": " + cause;
    db->mmdb_.reset();  // MMDB_open cleans up after itself on failure
    return nullptr;
  }
  // MMDB_open checks the metadata marker and the tree size; decoding the metadata map too makes a
  // truncated or tampered header fail here, at config load, instead of on some request.
  MMDB_entry_data_list_s* list = nullptr;
  if (db->mmdb_->metadata.node_count == 0) {
    *error = "GeoIP database " + path + ": no search tree (corrupt file)";
    return nullptr;
  }
  const int verify = MMDB_get_metadata_as_entry_data_list(db->mmdb_.get(), &list);
  MMDB_free_entry_data_list(list);
  if (verify != MMDB_SUCCESS) {
    *error = "GeoIP database " + path + ": bad metadata: " + MMDB_strerror(verify);
    return nullptr;
  }
  db->path_ = path;
  if (db->mmdb_->metadata.database_type) db->type_ = db->mmdb_->metadata.database_type;
  db->fields_ = fieldsFor(db->type_);
  return db;
}

uint8_t GeoIpDatabase::fieldsFor(std::string_view type) {
  // Each path walk is a scan of the record's top-level map with a string compare per key, and
  // most of them cannot match in a given database (a country database has no ASN keys), so
  // MaxMind's own types walk only the paths their documented schemas have at the top level.
  if (type == "GeoIP2-Country" || type == "GeoLite2-Country" || type == "GeoIP2-City" ||
      type == "GeoLite2-City")
    return kCountry;
  if (type == "GeoLite2-ASN" || type == "GeoIP2-ISP") return kAsn;
  if (type == "GeoIP2-Anonymous-IP") return kAnonymousFlags;
  // Anything else: every path, the anonymous flags only when the type says so (as before).
  uint8_t f = kCountry | kAsn;
  if (type.find("Anonymous") != std::string_view::npos) f |= kAnonymousFlags;
  return f;
}

GeoIpDatabase::~GeoIpDatabase() {
  if (mmdb_) MMDB_close(mmdb_.get());
}

bool GeoIpDatabase::lookup(const IpAddress& ip, GeoIpRecord* out, bool allFields,
                           int* prefixBits) const {
  sockaddr_storage ss{};
  if (ip.v4) {
    auto* s4 = reinterpret_cast<sockaddr_in*>(&ss);
    s4->sin_family = AF_INET;
    std::memcpy(&s4->sin_addr, &ip.bytes[12], 4);
  } else {
    auto* s6 = reinterpret_cast<sockaddr_in6*>(&ss);
    s6->sin6_family = AF_INET6;
    std::memcpy(&s6->sin6_addr, ip.bytes.data(), 16);
  }
  int mmdbError = MMDB_SUCCESS;
  MMDB_lookup_result_s res =
      MMDB_lookup_sockaddr(mmdb_.get(), reinterpret_cast<const sockaddr*>(&ss), &mmdbError);
  if (prefixBits) {
    // An IPv4 lookup in an IPv6 tree starts at the node of ::a.b.c.d/96 and reports the IPv6
    // depth; the IPv4 network is what is left below that start node.
    int bits = res.netmask;
    if (ip.v4 && mmdb_->metadata.ip_version == 6) bits -= mmdb_->ipv4_start_node.netmask;
    *prefixBits = std::clamp(bits, 0, ip.v4 ? 32 : 128);
    if (mmdbError != MMDB_SUCCESS) *prefixBits = ip.v4 ? 32 : 128;  // memoise nothing wider
  }
  if (mmdbError != MMDB_SUCCESS || !res.found_entry) return false;
  MMDB_entry_s* entry = &res.entry;
  MMDB_entry_data_s data;
  const uint8_t fields = allFields ? (kCountry | kAsn | kAnonymousFlags) : fields_;

  static const char* const kCountryPath[] = {"country", "iso_code", nullptr};
  if (const auto* d = (fields & kCountry) ? getValue(entry, &data, kCountryPath) : nullptr;
      d && d->type == MMDB_DATA_TYPE_UTF8_STRING && d->data_size == 2) {
    out->country[0] = d->utf8_string[0];
    out->country[1] = d->utf8_string[1];
    out->country[2] = 0;
  }
  static const char* const kAsnPath[] = {"autonomous_system_number", nullptr};
  if (const auto* d = (fields & kAsn) ? getValue(entry, &data, kAsnPath) : nullptr) {
    if (d->type == MMDB_DATA_TYPE_UINT32) out->asn = d->uint32;
    else if (d->type == MMDB_DATA_TYPE_UINT16) out->asn = d->uint16;
  }
  static const char* const kOrgPath[] = {"autonomous_system_organization", nullptr};
  if (const auto* d = (fields & kAsn) ? getValue(entry, &data, kOrgPath) : nullptr;
      d && d->type == MMDB_DATA_TYPE_UTF8_STRING) {
    out->asnOrg = std::string_view(d->utf8_string, d->data_size);
  }
  // Anonymous-IP databases only: skip the six path walks for the others.
  if (fields & kAnonymousFlags) {
    out->isAnonymous = getBool(entry, "is_anonymous");
    out->isVpn = getBool(entry, "is_anonymous_vpn");
    out->isHosting = getBool(entry, "is_hosting_provider");
    out->isPublicProxy = getBool(entry, "is_public_proxy");
    out->isResidentialProxy = getBool(entry, "is_residential_proxy");
    out->isTor = getBool(entry, "is_tor_exit_node");
  }
  return true;
}

}  // namespace sluice::risk
