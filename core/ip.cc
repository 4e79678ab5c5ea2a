#include "core/ip.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstring>

namespace sluice {

bool IpAddress::parse(std::string_view text, IpAddress* out) {
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof(buf)) return false;
  // Tolerate the bracketed IPv6 form used in Forwarded/XFF values.
  if (text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
  // inet_pton stops at a NUL, so "1.2.3.4\0junk" would otherwise pass as 1.2.3.4.
  if (memchr(text.data(), 0, text.size()) != nullptr) return false;
  memcpy(buf, text.data(), text.size());
  buf[text.size()] = 0;
  IpAddress ip;
  struct in_addr a4;
  if (inet_pton(AF_INET, buf, &a4) == 1) {
    ip.bytes.fill(0);
    ip.bytes[10] = 0xff;
    ip.bytes[11] = 0xff;
    memcpy(&ip.bytes[12], &a4, 4);
    ip.v4 = true;
    *out = ip;
    return true;
  }
  struct in6_addr a6;
  if (inet_pton(AF_INET6, buf, &a6) == 1) {
    memcpy(ip.bytes.data(), &a6, 16);
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    ip.v4 = memcmp(ip.bytes.data(), kMapped, 12) == 0;
    *out = ip;
    return true;
  }
  return false;
}

bool IpAddress::fromSockaddr(const struct sockaddr* sa, IpAddress* out, uint16_t* port) {
  IpAddress ip;
  if (sa->sa_family == AF_INET) {
    auto* s4 = reinterpret_cast<const sockaddr_in*>(sa);
    ip.bytes.fill(0);
    ip.bytes[10] = 0xff;
    ip.bytes[11] = 0xff;
    memcpy(&ip.bytes[12], &s4->sin_addr, 4);
    ip.v4 = true;
    if (port) *port = ntohs(s4->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    auto* s6 = reinterpret_cast<const sockaddr_in6*>(sa);
    memcpy(ip.bytes.data(), &s6->sin6_addr, 16);
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    ip.v4 = memcmp(ip.bytes.data(), kMapped, 12) == 0;
    if (port) *port = ntohs(s6->sin6_port);
  } else {
    return false;
  }
  *out = ip;
  return true;
}

std::string IpAddress::toString() const {
  char buf[INET6_ADDRSTRLEN];
  if (v4) {
    // Dotted quad by hand: glibc's inet_ntop formats IPv4 with sprintf (about 1,600
    // instructions), and the proxy formats a forwarded client address on every request.
    char* p = buf;
    for (int i = 12; i < 16; ++i) {
      const unsigned b = bytes[i];
      if (b >= 100) *p++ = static_cast<char>('0' + b / 100);
      if (b >= 10) *p++ = static_cast<char>('0' + b / 10 % 10);
      *p++ = static_cast<char>('0' + b % 10);
      if (i < 15) *p++ = '.';
    }
    return std::string(buf, static_cast<size_t>(p - buf));
  }
  inet_ntop(AF_INET6, bytes.data(), buf, sizeof(buf));
  return buf;
}

bool Cidr::parse(std::string_view text, Cidr* out) {
  auto slash = text.find('/');
  std::string_view addr = text.substr(0, slash);
  Cidr c;
  if (!IpAddress::parse(addr, &c.base)) return false;
  // The prefix counts bits of the address as written: "::ffff:0:0/96" is a v6-notation prefix
  // over the mapped range even though its base is an IPv4-mapped address.
  bool v4_notation = addr.find(':') == std::string_view::npos;
  int max = v4_notation ? 32 : 128;
  int bits = max;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    if (p.empty() || p.size() > 3) return false;
    bits = 0;
    for (char ch : p) {
      if (ch < '0' || ch > '9') return false;
      bits = bits * 10 + (ch - '0');
    }
    if (bits > max) return false;
  }
  c.prefix = v4_notation ? 96 + bits : bits;
  // Normalise the base so contains() can compare masked bytes directly.
  for (int i = 0; i < 16; i++) {
    int keep = c.prefix - i * 8;
    if (keep >= 8) continue;
    c.base.bytes[i] &= keep <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - keep));
  }
  *out = c;
  return true;
}

bool Cidr::contains(const IpAddress& ip) const {
  int full = prefix / 8;
  if (memcmp(ip.bytes.data(), base.bytes.data(), full) != 0) return false;
  int rest = prefix % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (ip.bytes[full] & mask) == base.bytes[full];
}

}  // namespace sluice
