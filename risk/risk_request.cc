#include "risk/risk_request.h"

#include "core/strings.h"

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
