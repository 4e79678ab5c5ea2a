#pragma once
// IP addresses and CIDR sets without sockets: used by trusted-proxy checks now and by the
// limiter (IPv6 prefix grouping) and risk lists later.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

struct sockaddr;

namespace sluice {

struct IpAddress {
  // IPv4 is stored as an IPv4-mapped IPv6 address so one comparison covers both.
  std::array<uint8_t, 16> bytes{};
  bool v4 = false;

  static bool parse(std::string_view text, IpAddress* out);
  static bool fromSockaddr(const struct sockaddr* sa, IpAddress* out, uint16_t* port = nullptr);
  std::string toString() const;
  bool operator==(const IpAddress& o) const { return bytes == o.bytes; }
};

struct Cidr {
  IpAddress base;
  int prefix = 0;  // in bits of the 128-bit form (v4 /24 is stored as 96+24)

  // Accepts "10.0.0.0/8", "::1/128", or a bare address (full-length prefix).
  static bool parse(std::string_view text, Cidr* out);
  bool contains(const IpAddress& ip) const;
};

class CidrSet {
 public:
  void add(const Cidr& c) { cidrs_.push_back(c); }
  bool contains(const IpAddress& ip) const {
    for (const auto& c : cidrs_)
      if (c.contains(ip)) return true;
    return false;
  }
  bool empty() const { return cidrs_.empty(); }
  size_t size() const { return cidrs_.size(); }

 private:
  std::vector<Cidr> cidrs_;
};

}  // namespace sluice
