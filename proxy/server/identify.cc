#include "proxy/server/identify.h"

#include <cstring>

#include "core/random.h"
#include "core/strings.h"

namespace sluice {

IpAddress resolveClientIp(const IpAddress& peer, const HeaderMap& headers, const CidrSet& trusted) {
  if (trusted.empty() || !trusted.contains(peer)) return peer;
  // All X-Forwarded-For fields, in order, form one list, walked from its right end: the last
  // fields are the ones our trusted hops wrote, so none of them may be skipped (a cap on the
  // first N fields let a client hide them behind forged ones).
  bool any_xff = false;
  IpAddress last_trusted = peer;
  for (size_t f = headers.size(); f-- > 0;) {
    if (headers.removed(f) || !equalsIgnoreCase(headers.name(f), "x-forwarded-for")) continue;
    any_xff = true;
    std::string_view v = headers.value(f);
    while (!v.empty()) {
      size_t comma = v.rfind(',');
      std::string_view item = trim(comma == std::string_view::npos ? v : v.substr(comma + 1));
      v = comma == std::string_view::npos ? std::string_view() : v.substr(0, comma);
      if (item.empty()) continue;
      IpAddress ip;
      if (!IpAddress::parse(item, &ip)) return last_trusted;  // garbage: stop at what we know
      if (!trusted.contains(ip)) return ip;
      last_trusted = ip;
    }
  }
  if (!any_xff) {
    std::string_view real;
    IpAddress ip;
    if (headers.get("x-real-ip", &real) && IpAddress::parse(trim(real), &ip)) return ip;
  }
  return last_trusted;
}

bool isValidRequestId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (unsigned char c : id) {
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-' || c == '_' || c == '.' || c == ':' || c == '/' || c == '+' || c == '=';
    if (!ok) return false;
  }
  return true;
}

static bool isLowerHex(std::string_view s) {
  bool nonzero = false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
    if (c != '0') nonzero = true;
  }
  return nonzero;
}

bool isValidTraceparent(std::string_view tp) {
  if (tp.size() < 55) return false;
  if (tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return false;
  std::string_view version = tp.substr(0, 2);
  if (version == "ff") return false;
  for (char c : version)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  if (version == "00" && tp.size() != 55) return false;
  // A later version may append fields, but only after another '-' (W3C Trace Context,
  // "Versioning of traceparent").
  if (tp.size() > 55 && tp[55] != '-') return false;
  if (!isLowerHex(tp.substr(3, 32)) || !isLowerHex(tp.substr(36, 16))) return false;
  std::string_view flags = tp.substr(53, 2);
  for (char c : flags)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

void writeTraceparent(std::string* out) {
  // "00-" + 32 hex trace id + "-" + 16 hex span id + "-01" (sampled: we start the trace so the
  // storefront's spans join it).
  out->resize(55);
  char* p = out->data();
  memcpy(p, "00-", 3);
  randomHex(p + 3, 32);
  p[35] = '-';
  randomHex(p + 36, 16);
  memcpy(p + 52, "-01", 3);
}

std::string newTraceparent() {
  std::string tp = "00-";
  tp.resize(3 + 32);
  randomHex(tp.data() + 3, 32);
  tp += '-';
  size_t off = tp.size();
  tp.resize(off + 16);
  randomHex(tp.data() + off, 16);
  tp += "-01";
  return tp;
}

}  // namespace sluice
