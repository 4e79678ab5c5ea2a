#pragma once
// User-Agent analysis: who the client says it is, and whether the rest of the request agrees.
// A real browser's UA, client hints (Sec-CH-UA*) and header order are written by one engine, so
// they agree; a script that sets a browser UA usually gets at least one of the others wrong.
#include <cstdint>
#include <string_view>

#include "risk/header_scan.h"
#include "risk/risk_request.h"

namespace sluice::risk {

enum class BrowserFamily : uint8_t { kUnknown, kChrome, kEdge, kFirefox, kSafari };
const char* browserFamilyName(BrowserFamily f);

struct UserAgentAnalysis {
  bool missing = false;      // no User-Agent header, or an empty one
  bool oversized = false;    // longer than kMaxUserAgentScan; only the head was scanned
  bool automation = false;   // a known HTTP library / automation tool token
  bool headless = false;     // HeadlessChrome, PhantomJS, Selenium, puppeteer, playwright markers
  std::string_view automationToken;  // which token matched (static storage), for explain
  BrowserFamily family = BrowserFamily::kUnknown;
  int majorVersion = 0;      // of the claimed browser, 0 when unknown
  bool mobile = false;       // the UA says "Mobile"
  // Client hints.
  bool hintsPresent = false;     // Sec-CH-UA sent
  bool hintsMissing = false;     // a Chromium browser recent enough to send them did not
  bool hintsGarbage = false;     // Sec-CH-UA* present but not parseable
  bool hintsBrandMismatch = false;    // brand/version disagree with the UA
  bool hintsMobileMismatch = false;   // Sec-CH-UA-Mobile disagrees with the UA
  bool hintsPlatformMismatch = false; // Sec-CH-UA-Platform disagrees with the UA
  // Header order/case differs from what the claimed browser sends (see BrowserProfile).
  bool headerOrderMismatch = false;
  const char* orderMismatchReason = "";

  bool hintsMismatch() const {
    return hintsBrandMismatch || hintsMobileMismatch || hintsPlatformMismatch;
  }
  bool claimsBrowser() const { return family != BrowserFamily::kUnknown; }

  static UserAgentAnalysis analyze(const RiskRequest& request);
  // The same with the request's header scan already done (evaluate() shares one).
  static UserAgentAnalysis analyze(const RiskRequest& request, const HeaderScan& scan);
};

constexpr size_t kMaxUserAgentScan = 512;

}  // namespace sluice::risk
