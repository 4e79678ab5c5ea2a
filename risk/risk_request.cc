#include "risk/risk_request.h"

#include <cstring>

#include "core/strings.h"
#include "core/swar.h"

namespace sluice::risk {

const char* routeClassName(RouteClass c) {
  switch (c) {
    case RouteClass::kOther: return "other";
    case RouteClass::kPageView: return "page";
    case RouteClass::kItemDetail: return "item_detail";
    case RouteClass::kApi: return "api";
    case RouteClass::kCheckout: return "checkout";
  }
  return "other";
}

void CookieJar::split(const std::vector<std::pair<std::string_view, std::string_view>>& headers) {
  startSplit();
  for (const auto& [name, value] : headers)
    if (name.size() == 6 && equalsIgnoreCase(name, "cookie")) addCookieHeader(value);
}

void CookieJar::addCookieHeader(std::string_view value) {
  const char* p = value.data();
  const char* const end = p + value.size();
  while (p < end) {
    const char* semi = static_cast<const char*>(std::memchr(p, ';', static_cast<size_t>(end - p)));
    if (!semi) semi = end;
    const std::string_view text = trim({p, static_cast<size_t>(semi - p)});
    p = semi + 1;
    if (text.empty()) continue;
    const void* eq = std::memchr(text.data(), '=', text.size());
    pairs_.push_back({text, eq ? text.substr(0, static_cast<size_t>(static_cast<const char*>(eq) -
                                                                    text.data()))
                               : text});
  }
}

std::string_view CookieJar::find(std::string_view name) const {
  const size_t n = name.size();
  // Cookie names are short: up to 8 bytes compare as one word each (no memcmp call).
  const uint64_t word = n - 1 < 8 ? swar::loadPartial(name.data(), n) : 0;
  for (const CookiePair& p : pairs_) {
    if (p.text.size() <= n || p.text[n] != '=') continue;
    if (n - 1 < 8 ? swar::loadPartial(p.text.data(), n) == word
                  : std::memcmp(p.text.data(), name.data(), n) == 0)
      return trim(p.text.substr(n + 1));
  }
  return {};
}

std::string_view RiskRequest::header(std::string_view name) const {
  for (const auto& h : headers)
    if (equalsIgnoreCase(h.first, name)) return h.second;
  return {};
}

bool RiskRequest::hasHeader(std::string_view name) const {
  for (const auto& h : headers)
    if (equalsIgnoreCase(h.first, name)) return true;
  return false;
}

}  // namespace sluice::risk
