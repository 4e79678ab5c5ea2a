#include "proxy/server/proxy_protocol.h"

#include <cstring>
#include <string_view>

namespace sluice {

namespace {

const uint8_t kV2Signature[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                  0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr size_t kV1MaxLength = 107;

ProxyProtocolResult error(const char* msg) {
  ProxyProtocolResult r;
  r.status = ProxyProtocolResult::Status::kError;
  r.error = msg;
  return r;
}

bool parsePort(std::string_view s, uint16_t* out) {
  if (s.empty() || s.size() > 5) return false;
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  if (v > 65535) return false;
  *out = static_cast<uint16_t>(v);
  return true;
}

ProxyProtocolResult parseV1(const char* data, size_t len) {
  const char* end = static_cast<const char*>(memchr(data, '\n', std::min(len, kV1MaxLength)));
  if (!end) {
    if (len >= kV1MaxLength) return error("PROXY v1 header too long");
    ProxyProtocolResult r;
    return r;  // incomplete
  }
  if (end == data || end[-1] != '\r') return error("PROXY v1 header must end in CRLF");
  std::string_view line(data, end - 1 - data);
  // "PROXY TCP4 src dst sport dport" or "PROXY UNKNOWN ..."
  std::string_view parts[6];
  size_t n = 0;
  while (!line.empty() && n < 6) {
    size_t sp = line.find(' ');
    parts[n++] = line.substr(0, sp);
    if (sp == std::string_view::npos) {
      line = {};
      break;
    }
    line.remove_prefix(sp + 1);
  }
  ProxyProtocolResult r;
  r.consumed = static_cast<size_t>(end - data) + 1;
  if (n >= 2 && parts[1] == "UNKNOWN") {
    r.status = ProxyProtocolResult::Status::kDone;
    return r;
  }
  if (n != 6 || !line.empty()) return error("malformed PROXY v1 header");
  if (parts[1] != "TCP4" && parts[1] != "TCP6") return error("PROXY v1: unknown protocol");
  if (!IpAddress::parse(parts[2], &r.source)) return error("PROXY v1: bad source address");
  IpAddress dst;
  if (!IpAddress::parse(parts[3], &dst)) return error("PROXY v1: bad destination address");
  // Judge the family by how the addresses are written, not by the parsed form: HAProxy on a
  // dual-stack bind sends "TCP6 ::ffff:a.b.c.d ...", and both addresses must match the protocol.
  bool want_v6 = parts[1] == "TCP6";
  if ((parts[2].find(':') != std::string_view::npos) != want_v6 ||
      (parts[3].find(':') != std::string_view::npos) != want_v6)
    return error("PROXY v1: address family mismatch");
  uint16_t dport;
  if (!parsePort(parts[4], &r.source_port) || !parsePort(parts[5], &dport))
    return error("PROXY v1: bad port");
  r.has_address = true;
  r.status = ProxyProtocolResult::Status::kDone;
  return r;
}

ProxyProtocolResult parseV2(const uint8_t* d, size_t len) {
  if (len < 16) return {};
  uint8_t ver_cmd = d[12];
  if ((ver_cmd >> 4) != 2) return error("PROXY v2: bad version");
  uint8_t cmd = ver_cmd & 0x0f;
  if (cmd > 1) return error("PROXY v2: bad command");
  uint8_t fam = d[13];
  size_t addr_len = (static_cast<size_t>(d[14]) << 8) | d[15];
  if (addr_len > 2048) return error("PROXY v2: header too long");
  if (len < 16 + addr_len) return {};
  ProxyProtocolResult r;
  r.consumed = 16 + addr_len;
  r.status = ProxyProtocolResult::Status::kDone;
  if (cmd == 0) return r;  // LOCAL: health check from the balancer itself
  const uint8_t* a = d + 16;
  if (fam == 0x11 || fam == 0x12) {  // TCP/UDP over IPv4
    if (addr_len < 12) return error("PROXY v2: short IPv4 block");
    r.source.bytes.fill(0);
    r.source.bytes[10] = r.source.bytes[11] = 0xff;
    memcpy(&r.source.bytes[12], a, 4);
    r.source.v4 = true;
    r.source_port = static_cast<uint16_t>((a[8] << 8) | a[9]);
    r.has_address = true;
  } else if (fam == 0x21 || fam == 0x22) {  // over IPv6
    if (addr_len < 36) return error("PROXY v2: short IPv6 block");
    memcpy(r.source.bytes.data(), a, 16);
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    r.source.v4 = memcmp(a, kMapped, 12) == 0;
    r.source_port = static_cast<uint16_t>((a[32] << 8) | a[33]);
    r.has_address = true;
  }
  // Other families (UNIX, UNSPEC): keep the TCP peer.
  return r;
}

}  // namespace

ProxyProtocolResult parseProxyProtocol(const char* data, size_t len) {
  if (len == 0) return {};
  const auto* d = reinterpret_cast<const uint8_t*>(data);
  size_t cmp = std::min<size_t>(len, 12);
  if (memcmp(d, kV2Signature, cmp) == 0) {
    if (len < 12) return {};
    return parseV2(d, len);
  }
  static const char kV1[] = "PROXY ";
  size_t c1 = std::min<size_t>(len, 6);
  if (memcmp(data, kV1, c1) == 0) {
    if (len < 6) return {};
    return parseV1(data, len);
  }
  return error("expected a PROXY protocol header");
}

}  // namespace sluice
