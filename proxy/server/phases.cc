#include "proxy/server/phases.h"

namespace sluice {

const char* phaseName(Phase p) {
  switch (p) {
    case Phase::kRead: return "read";
    case Phase::kIdentify: return "identify";
    case Phase::kRewrite: return "rewrite";
    case Phase::kLimit: return "limit";
    case Phase::kRisk: return "risk";
    case Phase::kAccess: return "access";
    case Phase::kContent: return "content";
    case Phase::kHeaderFilter: return "header_filter";
    case Phase::kBody: return "body";
    case Phase::kLog: return "log";
  }
  return "unknown";
}

}  // namespace sluice
