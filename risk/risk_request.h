#pragma once
// The plain-value view of a request that every risk component reads. The proxy's identify phase
// fills it once (no libuv, llhttp or proxy types cross this line), so risk/ stays unit-testable.
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/ip.h"

namespace sluice::risk {

// One header as it arrived: name with its original case, in wire order. Order and case are the
// header-order fingerprint's raw material, so nothing upstream of risk/ may normalise them.
using HeaderField = std::pair<std::string_view, std::string_view>;

// What kind of route the request hit; the caller's router decides (risk/ has no route table).
enum class RouteClass : uint8_t {
  kOther,       // static assets, health, anything not worth a behaviour event
  kPageView,    // an HTML page that is not an item's detail page
  kItemDetail,  // an item's detail page (itemId set)
  kApi,         // XHR/JSON calls
  kCheckout,    // checkout or order submit (itemId set when the route knows it)
};
const char* routeClassName(RouteClass c);

// The ';'-separated pairs of every Cookie header, in wire order, split once per request: the
// member and device ids, the pass token and the fingerprint's cookie names all read them here
// instead of each re-splitting the headers.
struct CookiePair {
  std::string_view text;  // the pair, trimmed of spaces and tabs ("a=1")
  std::string_view name;  // text before its first '=', the whole text when it has none
};

class CookieJar {
 public:
  // Splits every Cookie header (name "cookie", any case) of `headers`; clears what was there.
  void split(const std::vector<std::pair<std::string_view, std::string_view>>& headers);
  // The same split for a caller that already walks the headers (the proxy builds the request in
  // one pass): startSplit(), then addCookieHeader(value) for each Cookie header in wire order.
  void startSplit() {
    pairs_.clear();
    split_ = true;
  }
  void addCookieHeader(std::string_view value);
  void clear() {
    pairs_.clear();
    split_ = false;
  }
  bool isSplit() const { return split_; }
  // The value (trimmed) of the first pair whose text starts with `name=`; empty when none. The
  // name matches exactly: case-sensitive, no spaces before '=' (RiskEngine::findCookie's rule).
  std::string_view find(std::string_view name) const;
  const std::vector<CookiePair>& pairs() const { return pairs_; }

 private:
  std::vector<CookiePair> pairs_;  // capacity kept across requests (no allocation per request)
  bool split_ = false;
};

// A signal a caller (the Lua issue) adds with its own points.
struct ExtraSignal {
  std::string_view name;
  int points = 0;
};

struct RiskRequest {
  std::string_view method;  // "GET", as sent
  uint8_t httpMajor = 1;
  uint8_t httpMinor = 1;
  std::string_view path;
  std::string_view query;
  std::vector<HeaderField> headers;  // wire order, original case
  IpAddress clientIp;                // already resolved through trusted proxies
  std::string_view memberId;         // empty when anonymous
  std::string_view deviceId;         // storefront SDK's device id, empty when absent
  std::string_view addressHash;      // shipping-address hash header, empty when absent
  // TLS client fingerprint from the terminator; the proxy passes it only from trusted peers.
  std::string_view tlsFingerprint;
  RouteClass routeClass = RouteClass::kOther;
  std::string_view itemId;  // for kItemDetail and kCheckout
  std::string_view profile; // route's risk profile name; empty = "default"
  // Pass tokens and verifier reports outlive the process, so their times are wall-clock Unix
  // seconds; every window and decay uses the monotonic `Nanos now` passed to evaluate().
  int64_t wallSeconds = 0;
  std::vector<ExtraSignal> extraSignals;
  // The Cookie headers split; evaluate() splits them itself when the caller has not.
  CookieJar cookies;

  // First header with this name (case-insensitive), or empty.
  std::string_view header(std::string_view name) const;
  bool hasHeader(std::string_view name) const;
};

}  // namespace sluice::risk
