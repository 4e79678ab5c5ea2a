#pragma once
// User-Agent analysis: who the client says it is, and whether the rest of the request agrees.
// A real browser's UA, client hints (Sec-CH-UA*) and header order are written by one engine, so
// they agree; a script that sets a browser UA usually gets at least one of the others wrong.
#include <cstdint>
#include <memory>
#include <string_view>

#include "risk/header_scan.h"
#include "risk/risk_request.h"
#include "risk/two_way_sets.h"

namespace sluice::risk {

enum class BrowserFamily : uint8_t { kUnknown, kChrome, kEdge, kFirefox, kSafari };
const char* browserFamilyName(BrowserFamily f);

class UserAgentCache;

// The bytes the User-Agent part of the analysis reads: the trimmed User-Agent and the three client
// hints, and whether each hint header is present (an empty header is not an absent one).
struct UserAgentInput {
  std::string_view userAgent;
  std::string_view chUa;
  std::string_view chMobile;
  std::string_view chPlatform;
  bool haveChUa = false;
  bool haveMobile = false;
  bool havePlatform = false;

  static UserAgentInput of(const RiskRequest& request, const HeaderScan& scan);
};

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
  // The same with the request's header scan already done (evaluate() shares one). With a cache,
  // the part that depends only on the UA and client-hint bytes is looked up there; the header
  // order/case check always runs on this request.
  static UserAgentAnalysis analyze(const RiskRequest& request, const HeaderScan& scan,
                                   UserAgentCache* cache = nullptr);
};

// A per-thread memo of the UA + client-hints part of the analysis. Real traffic carries a few
// thousand distinct UAs, and the analysis (lower-casing, token scan, hint parsing) is a pure
// function of those bytes, so most requests repeat one already seen. Fixed size: kSets x kWays
// slots of kMaxKeyBytes plus the result, ~250 KB, allocated on a thread's first use; two-way LRU
// per set. The whole key is stored and compared, the hash only picks the set. It reads no
// configuration and no keys (the browser rules are compiled in), so a reload has nothing to
// invalidate. Not thread-safe: one per thread (forThisThread).
class UserAgentCache {
 public:
  static constexpr size_t kWays = kMemoWays;
  static constexpr size_t kSets = 256;
  static constexpr size_t kMaxKeyBytes = 440;  // flags + 4 lengths + bytes; longer: not cached

  struct Stats {
    uint64_t hits = 0;
    uint64_t misses = 0;
    uint64_t evictions = 0;
    uint64_t uncacheable = 0;  // missing or too long a UA: analysed, not stored
  };

  UserAgentCache();
  ~UserAgentCache();
  UserAgentCache(const UserAgentCache&) = delete;
  UserAgentCache& operator=(const UserAgentCache&) = delete;

  // The UA-only analysis of `in` (headerOrderMismatch unset); *ios: an iPhone/iPad UA, for
  // which the header-order profiles do not apply.
  UserAgentAnalysis lookup(const UserAgentInput& in, bool* ios);
  const Stats& stats() const { return stats_; }

  static UserAgentCache& forThisThread();

 private:
  struct Entry;
  TwoWaySets<Entry, kSets> slots_;
  Stats stats_;
};

constexpr size_t kMaxUserAgentScan = 512;

}  // namespace sluice::risk
