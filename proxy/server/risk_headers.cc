#include "proxy/server/risk_headers.h"

#include "core/strings.h"

namespace sluice {

namespace {

// A configured header name, matched case-insensitively against the request's: the length and the
// folded first byte first (equal names always pass both), the full compare only then. An empty
// name matches nothing.
struct Matcher {
  explicit Matcher(std::string_view want)
      : name(want), first(want.empty() ? 0 : static_cast<char>(want[0] | 0x20)) {}
  bool matches(std::string_view n) const {
    return n.size() == name.size() && !name.empty() && static_cast<char>(n[0] | 0x20) == first &&
           equalsIgnoreCase(n, name);
  }
  std::string_view name;
  char first;
};

constexpr uint64_t kCookieBit = HeaderNameFilter::bit("cookie");
constexpr uint64_t kHopBits = HeaderNameFilter::bit("x-forwarded-for") |
                              HeaderNameFilter::bit("x-forwarded-proto") |
                              HeaderNameFilter::bit("x-forwarded-host") |
                              HeaderNameFilter::bit("x-real-ip") | HeaderNameFilter::bit("forwarded") |
                              HeaderNameFilter::bit("via");

}  // namespace

bool isHopHeader(std::string_view name) {
  // equalsLowerCase, not equalsIgnoreCase: the literals are lower case.
  if (name.size() < 3) return false;
  const char c = static_cast<char>(name[0] | 0x20);
  if (c != 'x' && c != 'f' && c != 'v') return false;
  return equalsLowerCase(name, "x-forwarded-for") || equalsLowerCase(name, "x-forwarded-proto") ||
         equalsLowerCase(name, "x-forwarded-host") || equalsLowerCase(name, "x-real-ip") ||
         equalsLowerCase(name, "forwarded") || equalsLowerCase(name, "via");
}

std::string_view collectRiskHeaders(HeaderMap& headers, const RiskHeaderNames& names,
                                    bool trusted_peer, risk::RiskRequest* r) {
  r->tlsFingerprint = {};
  r->addressHash = {};
  r->cookies.startSplit();
  // Every name the pass acts on sets its bit; a name whose bit is clear is only copied (most of a
  // browser's headers: one filter test instead of five matchers).
  HeaderNameFilter filter(kCookieBit | (trusted_peer ? kHopBits : 0));
  filter.add(names.tls_fingerprint);
  filter.add(names.device);
  filter.add(names.address);
  const Matcher tls(names.tls_fingerprint), device_header(names.device),
      address_header(names.address);
  std::string_view device_from_header;
  bool device_seen = false, address_seen = false;
  const size_t count = headers.size();
  // Sized for every field up front and cut to what was kept at the end: a store per header, no
  // capacity check per header. The vector keeps its size between requests, so growing it
  // value-initialises only what this request has more than the last.
  auto& out = r->headers;
  out.resize(count);
  risk::HeaderField* const first = out.data();
  risk::HeaderField* o = first;
  // The fields and bytes as locals: the stores below could alias HeaderMap's members, which
  // would reload both bases per header. Nothing appends to `headers` during the pass.
  const HeaderMap::Field* const fields = headers.fieldData();
  const char* const bytes = headers.byteData();
  for (size_t i = 0; i < count; i++) {
    const HeaderMap::Field& f = fields[i];
    if (f.removed) continue;
    const char* const np = bytes + f.name_off;
    // np[0] is readable for an empty name too (byteData() is NUL-terminated); an empty name may
    // pass the filter, and the matchers below match no empty name.
    if (!filter.mayContain(static_cast<unsigned char>(np[0]), f.name_len)) {
      *o++ = {{np, f.name_len}, {bytes + f.value_off, f.value_len}};
      continue;
    }
    const std::string_view name(np, f.name_len);
    if (tls.matches(name)) {
      // Honoured only from a trusted terminator; anyone else's copy is dropped (never forwarded).
      if (trusted_peer) {
        if (r->tlsFingerprint.empty()) r->tlsFingerprint = headers.value(i);
      } else {
        headers.remove(i);
      }
      continue;
    }
    if (trusted_peer && isHopHeader(name)) continue;
    const std::string_view value = headers.value(i);
    *o++ = {name, value};
    if (equalsLowerCase(name, "cookie")) r->cookies.addCookieHeader(value);
    if (!device_seen && device_header.matches(name)) {
      device_seen = true;
      device_from_header = value;
    }
    if (!address_seen && address_header.matches(name)) {
      address_seen = true;
      r->addressHash = value;
    }
  }
  out.resize(static_cast<size_t>(o - first));
  return device_from_header;
}

}  // namespace sluice
