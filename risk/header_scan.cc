#include "risk/header_scan.h"

#include <cstring>

namespace sluice::risk {
namespace {

constexpr std::string_view kNames[kHeaderIdCount] = {
    "",         "host",      "user-agent",       "accept",            "accept-encoding",
    "accept-language", "cookie", "referer",      "sec-ch-ua",         "sec-ch-ua-mobile",
    "sec-ch-ua-platform", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"};

bool is(const char* lower, std::string_view name, HeaderId id) {
  return std::memcmp(lower, kNames[static_cast<int>(id)].data(), name.size()) == 0;
}

}  // namespace

std::string_view headerIdName(HeaderId id) { return kNames[static_cast<int>(id)]; }

HeaderId classifyHeader(std::string_view name) {
  bool upper;
  return classifyHeader(name, &upper);
}

HeaderId classifyHeader(std::string_view name, bool* hasUpper) {
  const size_t n = name.size();
  if (n < 4 || n > 18) {
    bool upper = false;
    for (char c : name) upper |= (c >= 'A' && c <= 'Z');
    *hasUpper = upper;
    return HeaderId::kOther;
  }
  char lower[18];
  bool upper = false;
  for (size_t i = 0; i < n; ++i) {
    const char c = name[i];
    const bool u = c >= 'A' && c <= 'Z';
    upper |= u;
    lower[i] = u ? static_cast<char>(c + 32) : c;
  }
  *hasUpper = upper;
  switch (n) {
    case 4: return is(lower, name, HeaderId::kHost) ? HeaderId::kHost : HeaderId::kOther;
    case 6:
      if (is(lower, name, HeaderId::kAccept)) return HeaderId::kAccept;
      if (is(lower, name, HeaderId::kCookie)) return HeaderId::kCookie;
      return HeaderId::kOther;
    case 7: return is(lower, name, HeaderId::kReferer) ? HeaderId::kReferer : HeaderId::kOther;
    case 9: return is(lower, name, HeaderId::kSecChUa) ? HeaderId::kSecChUa : HeaderId::kOther;
    case 10: return is(lower, name, HeaderId::kUserAgent) ? HeaderId::kUserAgent : HeaderId::kOther;
    case 14:
      if (std::memcmp(lower, "sec-fetch-", 10) != 0) return HeaderId::kOther;
      if (is(lower, name, HeaderId::kSecFetchSite)) return HeaderId::kSecFetchSite;
      if (is(lower, name, HeaderId::kSecFetchMode)) return HeaderId::kSecFetchMode;
      if (is(lower, name, HeaderId::kSecFetchDest)) return HeaderId::kSecFetchDest;
      return HeaderId::kOther;
    case 15:
      if (is(lower, name, HeaderId::kAcceptEncoding)) return HeaderId::kAcceptEncoding;
      if (is(lower, name, HeaderId::kAcceptLanguage)) return HeaderId::kAcceptLanguage;
      return HeaderId::kOther;
    case 16: return is(lower, name, HeaderId::kSecChUaMobile) ? HeaderId::kSecChUaMobile : HeaderId::kOther;
    case 18:
      return is(lower, name, HeaderId::kSecChUaPlatform) ? HeaderId::kSecChUaPlatform : HeaderId::kOther;
    default: return HeaderId::kOther;
  }
}

HeaderScan HeaderScan::of(const std::vector<HeaderField>& headers) {
  HeaderScan s;
  for (auto& f : s.first) f = -1;
  for (size_t i = 0; i < headers.size(); ++i) {
    const std::string_view name = headers[i].first;
    bool upper = false;
    const HeaderId id = classifyHeader(name, &upper);
    s.anyUpper |= upper;
    if (id == HeaderId::kOther) continue;
    const int k = static_cast<int>(id);
    if (s.first[k] < 0) s.first[k] = static_cast<int32_t>(i);
    if (upper) s.notLower |= bit(id);
    // Title-Case: upper at the start and after '-', lower elsewhere.
    const std::string_view canon = kNames[k];
    bool title = true;
    for (size_t j = 0; j < name.size(); ++j) {
      const bool wantUpper = j == 0 || canon[j - 1] == '-';
      const char want = wantUpper && canon[j] >= 'a' && canon[j] <= 'z' ? static_cast<char>(canon[j] - 32) : canon[j];
      title &= name[j] == want;
    }
    if (!title) s.notTitle |= bit(id);
  }
  return s;
}

}  // namespace sluice::risk
