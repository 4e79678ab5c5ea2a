#include "risk/user_agent.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>

#include "core/hash.h"
#include "core/strings.h"
#include "core/swar.h"

namespace sluice::risk {
namespace {

// HTTP libraries and automation tools, matched case-insensitively anywhere in the UA.
constexpr std::string_view kAutomationTokens[] = {
    "curl/",         "wget/",     "python-requests", "python-urllib", "python-httpx",
    "aiohttp",       "go-http-client", "okhttp",     "java/",         "apache-httpclient",
    "node-fetch",    "axios/",    "scrapy",          "libwww-perl",   "httpie/",
    "postmanruntime"};
// Headless browsers and browser-automation drivers.
constexpr std::string_view kHeadlessTokens[] = {"headlesschrome", "phantomjs", "selenium",
                                                "puppeteer",      "playwright", "webdriver"};

// Header order rule: when both headers are present, `before` comes first on the wire.
struct OrderRule {
  HeaderId before;
  HeaderId after;
};

// A name whose exact case the browser writes: all lower case, or Title-Case ("User-Agent").
struct ExactCase {
  HeaderId id;
  bool lower;
};

using H = HeaderId;

// What one browser family writes. Sources: request captures of current desktop and Android
// releases over HTTP/1.1 (Chrome/Edge 120-124, Firefox 115-125, Safari 17), cross-checked with the
// header lists the browser-impersonation libraries keep per release (curl-impersonate, tls-client).
// Only rules stable across navigations, subresources and fetch() are kept, so a real browser
// never trips them.
struct BrowserProfile {
  BrowserFamily family;
  bool sendsClientHints;  // Chromium sends Sec-CH-UA on every secure request since M89
  int hintsSinceMajor;
  std::initializer_list<OrderRule> order;
  // Names whose exact case the browser writes over HTTP/1.x (Chromium writes the client hints in
  // lower case but the classic headers in Title-Case).
  std::initializer_list<ExactCase> exactCase;
};

const BrowserProfile kProfiles[] = {
    {BrowserFamily::kChrome, true, 89,
     {{H::kSecChUa, H::kUserAgent}, {H::kUserAgent, H::kAcceptEncoding}, {H::kAccept, H::kAcceptEncoding},
      {H::kAcceptEncoding, H::kAcceptLanguage}, {H::kSecFetchSite, H::kSecFetchMode},
      {H::kSecFetchMode, H::kSecFetchDest}},
     {{H::kSecChUa, true}, {H::kSecChUaMobile, true}, {H::kSecChUaPlatform, true}, {H::kUserAgent, false}}},
    {BrowserFamily::kEdge, true, 89,
     {{H::kSecChUa, H::kUserAgent}, {H::kUserAgent, H::kAcceptEncoding}, {H::kAccept, H::kAcceptEncoding},
      {H::kAcceptEncoding, H::kAcceptLanguage}, {H::kSecFetchSite, H::kSecFetchMode},
      {H::kSecFetchMode, H::kSecFetchDest}},
     {{H::kSecChUa, true}, {H::kSecChUaMobile, true}, {H::kSecChUaPlatform, true}, {H::kUserAgent, false}}},
    // Firefox: User-Agent right after Host, Accept-Language before Accept-Encoding, Sec-Fetch-Dest
    // first of the fetch metadata; never client hints.
    {BrowserFamily::kFirefox, false, 0,
     {{H::kUserAgent, H::kAccept}, {H::kAccept, H::kAcceptLanguage}, {H::kAcceptLanguage, H::kAcceptEncoding},
      {H::kSecFetchDest, H::kSecFetchMode}, {H::kSecFetchMode, H::kSecFetchSite}},
     {{H::kUserAgent, false}}},
    // Safari: Accept before User-Agent; never client hints.
    {BrowserFamily::kSafari, false, 0,
     {{H::kAccept, H::kUserAgent}, {H::kAccept, H::kAcceptEncoding}},
     {{H::kUserAgent, false}}},
};

const BrowserProfile* profileFor(BrowserFamily f) {
  for (const auto& p : kProfiles)
    if (p.family == f) return &p;
  return nullptr;
}

// Every UA token the analysis looks for, found in one pass over the UA: tokens are bucketed by
// first byte, and each position only tries the tokens starting with its byte. Case-insensitive
// tokens are matched against the lower-cased copy, case-sensitive ones against the original.
enum Tok : uint8_t {
  // kHeadlessTokens then kAutomationTokens, in their priority order (case-insensitive).
  kTokHeadlessFirst = 0,
  kTokAutomationFirst = 6,
  kTokCaseInsensitiveEnd = 22,
  // Case-sensitive, first position wanted.
  kTokEdg = kTokCaseInsensitiveEnd, kTokHeadlessChrome, kTokChrome, kTokCriOS, kTokFirefox,
  kTokFxiOS, kTokSafari, kTokVersion, kTokMobile, kTokIPhone, kTokIPad, kTokAndroid,
  kTokWindowsNt, kTokMacintosh, kTokLinux, kTokCrOS,
  kTokCount
};
static_assert(std::size(kHeadlessTokens) == kTokAutomationFirst - kTokHeadlessFirst);
static_assert(std::size(kAutomationTokens) == kTokCaseInsensitiveEnd - kTokAutomationFirst);

constexpr std::string_view kCaseSensitiveTokens[kTokCount - kTokCaseInsensitiveEnd] = {
    "Edg/", "HeadlessChrome/", "Chrome/", "CriOS/", "Firefox/", "FxiOS/", "Safari/", "Version/",
    "Mobile", "iPhone", "iPad", "Android", "Windows NT", "Macintosh", "Linux", "CrOS"};

std::string_view tokenText(int t) {
  if (t < kTokAutomationFirst) return kHeadlessTokens[t];
  if (t < kTokCaseInsensitiveEnd) return kAutomationTokens[t - kTokAutomationFirst];
  return kCaseSensitiveTokens[t - kTokCaseInsensitiveEnd];
}

struct TokenIndex {
  // Per first byte: up to kPerByte token ids (0xff = none); one table per case mode.
  static constexpr int kPerByte = 8;
  uint8_t insensitive[256][kPerByte];
  uint8_t sensitive[256][kPerByte];
  bool any[256] = {};  // some token (either mode) starts with this byte
  TokenIndex() {
    std::memset(insensitive, 0xff, sizeof insensitive);
    std::memset(sensitive, 0xff, sizeof sensitive);
    for (int t = 0; t < kTokCount; ++t) {
      auto& row = t < kTokCaseInsensitiveEnd ? insensitive : sensitive;
      uint8_t* slots = row[static_cast<unsigned char>(tokenText(t)[0])];
      int j = 0;
      while (j < kPerByte && slots[j] != 0xff) ++j;
      if (j == kPerByte) abort();  // more tokens share a first byte than a row holds
      slots[j] = static_cast<uint8_t>(t);
      any[static_cast<unsigned char>(tokenText(t)[0])] = true;
    }
  }
};
const TokenIndex& tokenIndex() {
  static const TokenIndex index;
  return index;
}

bool matchesAt(const char* p, std::string_view tok) {
  // The first byte already matched (it picked the bucket).
  for (size_t k = 1; k < tok.size(); ++k)
    if (p[k] != tok[k]) return false;
  return true;
}

// first[t] = position of token t's first occurrence, or -1.
void scanTokens(std::string_view lower, std::string_view orig, int16_t* first) {
  const TokenIndex& idx = tokenIndex();
  for (int t = 0; t < kTokCount; ++t) first[t] = -1;
  const size_t n = lower.size();
  for (size_t i = 0; i < n; ++i) {
    const unsigned char cl = static_cast<unsigned char>(lower[i]);
    const unsigned char co = static_cast<unsigned char>(orig[i]);
    if (!idx.any[cl] && !idx.any[co]) continue;
    const uint8_t* a = idx.insensitive[cl];
    for (int j = 0; j < TokenIndex::kPerByte && a[j] != 0xff; ++j) {
      const std::string_view tok = tokenText(a[j]);
      if (first[a[j]] < 0 && tok.size() <= n - i && matchesAt(lower.data() + i, tok))
        first[a[j]] = static_cast<int16_t>(i);
    }
    const uint8_t* b = idx.sensitive[co];
    for (int j = 0; j < TokenIndex::kPerByte && b[j] != 0xff; ++j) {
      const std::string_view tok = tokenText(b[j]);
      if (first[b[j]] < 0 && tok.size() <= n - i && matchesAt(orig.data() + i, tok))
        first[b[j]] = static_cast<int16_t>(i);
    }
  }
}

// The major version right after the token's first occurrence (-1 when absent or no digits).
int majorAt(std::string_view ua, const int16_t* first, int tok) {
  if (first[tok] < 0) return -1;
  size_t pos = static_cast<size_t>(first[tok]) + tokenText(tok).size();
  int v = 0;
  size_t digits = 0;
  while (pos < ua.size() && ua[pos] >= '0' && ua[pos] <= '9' && digits < 5) {
    v = v * 10 + (ua[pos++] - '0');
    ++digits;
  }
  return digits ? v : -1;
}

// A Sec-CH-UA structured-field list: `"Brand";v="124", "Chromium";v="124"`. Calls
// fn(brand, version) per item; false when the value is not of that shape.
template <class Fn>
bool parseBrandList(std::string_view v, Fn&& fn) {
  if (v.empty() || v.size() > 512) return false;
  size_t pos = 0;
  int items = 0;
  while (pos < v.size()) {
    while (pos < v.size() && (v[pos] == ' ' || v[pos] == '\t')) ++pos;
    if (pos >= v.size() || v[pos] != '"') return false;
    size_t close = v.find('"', pos + 1);
    if (close == std::string_view::npos) return false;
    std::string_view brand = v.substr(pos + 1, close - pos - 1);
    pos = close + 1;
    int version = -1;
    while (pos < v.size() && v[pos] == ';') {
      ++pos;
      size_t eq = v.find('=', pos);
      if (eq == std::string_view::npos) return false;
      std::string_view key = trim(v.substr(pos, eq - pos));
      pos = eq + 1;
      std::string_view val;
      if (pos < v.size() && v[pos] == '"') {
        size_t c = v.find('"', pos + 1);
        if (c == std::string_view::npos) return false;
        val = v.substr(pos + 1, c - pos - 1);
        pos = c + 1;
      } else {
        size_t e = pos;
        while (e < v.size() && v[e] != ',' && v[e] != ';') ++e;
        val = trim(v.substr(pos, e - pos));
        pos = e;
      }
      if (key == "v") {
        version = 0;
        size_t i = 0;
        for (; i < val.size() && i < 6 && val[i] >= '0' && val[i] <= '9'; ++i)
          version = version * 10 + (val[i] - '0');
        if (i == 0) return false;
      }
    }
    while (pos < v.size() && (v[pos] == ' ' || v[pos] == '\t')) ++pos;
    if (pos < v.size()) {
      if (v[pos] != ',') return false;
      ++pos;
      if (trim(v.substr(pos)).empty()) return false;  // a trailing comma
    }
    fn(brand, version);
    if (++items > 16) return false;
  }
  return items > 0;
}

std::string_view unquote(std::string_view v, bool* ok) {
  v = trim(v);
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') {
    *ok = true;
    return v.substr(1, v.size() - 2);
  }
  *ok = false;
  return v;
}

void checkHeaderOrder(const RiskRequest& r, const HeaderScan& scan, const BrowserProfile& p,
                      UserAgentAnalysis* out) {
  for (const auto& rule : p.order) {
    const int a = scan.index(rule.before);
    const int b = scan.index(rule.after);
    if (a >= 0 && b >= 0 && a > b) {
      out->headerOrderMismatch = true;
      out->orderMismatchReason = "header order differs from the claimed browser";
      return;
    }
  }
  if (!scan.has(HeaderId::kAcceptLanguage)) {
    out->headerOrderMismatch = true;
    out->orderMismatchReason = "browser request without Accept-Language";
    return;
  }
  // HTTP/2 names are lower case by rule, and a terminator that downgrades keeps them so.
  if (r.httpMajor == 1 && scan.anyUpper) {
    for (const ExactCase& want : p.exactCase) {
      if ((want.lower ? scan.notLower : scan.notTitle) & HeaderScan::bit(want.id)) {
        out->headerOrderMismatch = true;
        out->orderMismatchReason = "header name case differs from the claimed browser";
        return;
      }
    }
  }
}

UserAgentAnalysis analyzeBytes(const UserAgentInput& in, bool* iosOut) {
  UserAgentAnalysis out;
  *iosOut = false;
  const std::string_view rawUa = in.userAgent;
  const std::string_view chUa = in.chUa;
  const std::string_view chMobile = in.chMobile;
  const std::string_view chPlatform = in.chPlatform;
  const bool haveChUa = in.haveChUa;
  const bool haveMobile = in.haveMobile;
  const bool havePlatform = in.havePlatform;
  if (rawUa.empty()) {
    out.missing = true;
    return out;
  }
  // Lower-cased copy of the head, on the stack: tokens are matched case-insensitively.
  char lower[kMaxUserAgentScan];
  const size_t n = std::min(rawUa.size(), kMaxUserAgentScan);
  out.oversized = rawUa.size() > kMaxUserAgentScan;
  for (size_t i = 0; i < n; ++i) lower[i] = asciiLower(rawUa[i]);
  const std::string_view ua(lower, n);
  const std::string_view orig = rawUa.substr(0, n);

  int16_t first[kTokCount];
  scanTokens(ua, orig, first);
  for (int t = kTokHeadlessFirst; t < kTokAutomationFirst; ++t) {
    if (first[t] >= 0) {
      out.headless = true;
      out.automationToken = tokenText(t);
      break;
    }
  }
  if (!out.headless) {
    for (int t = kTokAutomationFirst; t < kTokCaseInsensitiveEnd; ++t) {
      if (first[t] >= 0) {
        out.automation = true;
        out.automationToken = tokenText(t);
        break;
      }
    }
  }

  // Claimed browser. Order matters: Edge's UA also says Chrome and Safari, Chrome's says Safari.
  int v;
  if ((v = majorAt(orig, first, kTokEdg)) >= 0) {
    out.family = BrowserFamily::kEdge;
  } else if ((v = majorAt(orig, first, kTokHeadlessChrome)) >= 0 ||
             (v = majorAt(orig, first, kTokChrome)) >= 0 ||
             (v = majorAt(orig, first, kTokCriOS)) >= 0) {
    out.family = BrowserFamily::kChrome;
  } else if ((v = majorAt(orig, first, kTokFirefox)) >= 0 ||
             (v = majorAt(orig, first, kTokFxiOS)) >= 0) {
    out.family = BrowserFamily::kFirefox;
  } else if (first[kTokSafari] >= 0 && (v = majorAt(orig, first, kTokVersion)) >= 0) {
    out.family = BrowserFamily::kSafari;
  }
  if (out.family != BrowserFamily::kUnknown) out.majorVersion = v;
  // An HTTP library's UA is not a browser claim, even if it mentions one.
  if (out.automation) out.family = BrowserFamily::kUnknown;
  out.mobile = first[kTokMobile] >= 0;
  // iOS browsers are all WebKit underneath: no client hints whatever the brand says.
  const bool ios = first[kTokIPhone] >= 0 || first[kTokIPad] >= 0;

  out.hintsPresent = haveChUa;
  const BrowserFamily f = out.family;
  const bool chromium = (f == BrowserFamily::kChrome || f == BrowserFamily::kEdge) && !ios;
  if (haveChUa) {
    bool sawChrome = false, sawChromium = false, sawEdge = false;
    int chromeV = -1, chromiumV = -1, edgeV = -1;
    bool ok = parseBrandList(chUa, [&](std::string_view brand, int version) {
      if (brand == "Google Chrome") sawChrome = true, chromeV = version;
      if (brand == "Chromium") sawChromium = true, chromiumV = version;
      if (brand == "Microsoft Edge") sawEdge = true, edgeV = version;
    });
    if (!ok) {
      out.hintsGarbage = true;
    } else if (f == BrowserFamily::kFirefox || f == BrowserFamily::kSafari || ios) {
      out.hintsBrandMismatch = true;  // these engines never send client hints
    } else if (f == BrowserFamily::kChrome) {
      if (sawEdge || !(sawChrome || sawChromium)) out.hintsBrandMismatch = true;
      if (sawChrome && chromeV != out.majorVersion) out.hintsBrandMismatch = true;
      if (!sawChrome && sawChromium && chromiumV != out.majorVersion) out.hintsBrandMismatch = true;
    } else if (f == BrowserFamily::kEdge) {
      if (!sawEdge || edgeV != out.majorVersion) out.hintsBrandMismatch = true;
    }
  } else if (const BrowserProfile* p = profileFor(f);
             p != nullptr && p->sendsClientHints && !ios && out.majorVersion >= p->hintsSinceMajor) {
    out.hintsMissing = true;
  }
  if (haveMobile) {
    std::string_view m = trim(chMobile);
    if (m == "?1" || m == "?0") {
      if (chromium && (m == "?1") != out.mobile) out.hintsMobileMismatch = true;
    } else {
      out.hintsGarbage = true;
    }
  }
  if (havePlatform) {
    bool quoted = false;
    std::string_view p = unquote(chPlatform, &quoted);
    if (!quoted || p.size() > 32) {
      out.hintsGarbage = true;
    } else if (chromium) {
      const bool android = first[kTokAndroid] >= 0;
      bool agrees = true;
      if (p == "Windows") agrees = first[kTokWindowsNt] >= 0;
      else if (p == "macOS") agrees = first[kTokMacintosh] >= 0;
      else if (p == "Android") agrees = android;
      else if (p == "Linux") agrees = !android && first[kTokLinux] >= 0;
      else if (p == "Chrome OS" || p == "Chromium OS") agrees = first[kTokCrOS] >= 0;
      if (!agrees) out.hintsPlatformMismatch = true;
    }
  }

  *iosOut = ios;
  return out;
}

}  // namespace

const char* browserFamilyName(BrowserFamily f) {
  switch (f) {
    case BrowserFamily::kUnknown: return "unknown";
    case BrowserFamily::kChrome: return "chrome";
    case BrowserFamily::kEdge: return "edge";
    case BrowserFamily::kFirefox: return "firefox";
    case BrowserFamily::kSafari: return "safari";
  }
  return "unknown";
}

UserAgentInput UserAgentInput::of(const RiskRequest& r, const HeaderScan& scan) {
  UserAgentInput in;
  in.userAgent = trim(scan.value(r.headers, HeaderId::kUserAgent));
  in.chUa = scan.value(r.headers, HeaderId::kSecChUa);
  in.chMobile = scan.value(r.headers, HeaderId::kSecChUaMobile);
  in.chPlatform = scan.value(r.headers, HeaderId::kSecChUaPlatform);
  in.haveChUa = scan.has(HeaderId::kSecChUa);
  in.haveMobile = scan.has(HeaderId::kSecChUaMobile);
  in.havePlatform = scan.has(HeaderId::kSecChUaPlatform);
  return in;
}

UserAgentAnalysis UserAgentAnalysis::analyze(const RiskRequest& r) {
  return analyze(r, HeaderScan::of(r.headers));
}

UserAgentAnalysis UserAgentAnalysis::analyze(const RiskRequest& r, const HeaderScan& scan,
                                             UserAgentCache* cache) {
  const UserAgentInput in = UserAgentInput::of(r, scan);
  bool ios = false;
  UserAgentAnalysis out = cache ? cache->lookup(in, &ios) : analyzeBytes(in, &ios);
  // The header order and case are this request's own: checked every time, never cached.
  if (out.missing) return out;
  if (const BrowserProfile* profile = profileFor(out.family); profile != nullptr && !ios) {
    checkHeaderOrder(r, scan, *profile, &out);
  }
  return out;
}

// Cache key: presence flags, the four lengths, then the bytes, so ("ab", "c") and ("a", "bc")
// differ and an empty hint header differs from an absent one. The request's parts are hashed and
// compared where they lie, not copied into one key first (the copy, and hashing the hints, were
// half of a hit). The hash covers the flags, the lengths and the UA only: it picks the set and
// rejects most other entries early; the hints' bytes are compared, never hashed.
struct UserAgentCache::Entry {
  uint64_t hash = 0;
  uint64_t shape = 0;  // the four lengths (16 bits each) and the flags; 0 = empty slot
  bool ios = false;
  UserAgentAnalysis result;
  char key[kMaxKeyBytes + 8];  // the four parts one after another; 8 spare bytes for word reads
};

namespace {

// n bytes of the request against the stored copy (padded): the short parts (Sec-CH-UA-Mobile,
// -Platform) as one or two words inline, the long ones by memcmp. An absent hint (n 0) is not read.
inline bool sameBytes(const char* stored, const char* p, size_t n) {
  return n > 16 ? std::memcmp(stored, p, n) == 0 : swar::diffFromPadded(stored, p, n) == 0;
}

}  // namespace

UserAgentCache::UserAgentCache() = default;
UserAgentCache::~UserAgentCache() = default;

UserAgentAnalysis UserAgentCache::lookup(const UserAgentInput& in, bool* ios) {
  constexpr size_t kHeader = 9;  // the limit counts a flags byte and four 2-byte lengths, as before
  const std::string_view parts[4] = {in.userAgent, in.chUa, in.chMobile, in.chPlatform};
  const size_t bytes = parts[0].size() + parts[1].size() + parts[2].size() + parts[3].size();
  if (in.userAgent.empty() || kHeader + bytes > kMaxKeyBytes) {
    // Missing UAs cost nothing to analyse; oversized ones would evict the common ones.
    ++stats_.uncacheable;
    return analyzeBytes(in, ios);
  }
  // Each length is under kMaxKeyBytes, so 16 bits each; the flags above them. Never 0: a UA.
  const uint64_t flags =
      (in.haveChUa ? 1 : 0) | (in.haveMobile ? 2 : 0) | (in.havePlatform ? 4 : 0);
  const uint64_t shape = parts[0].size() | parts[1].size() << 16 | parts[2].size() << 32 |
                         parts[3].size() << 48 | flags << 61;
  const uint64_t h = hash64(in.userAgent, mix64(shape ^ 0x55a));
  const size_t set = static_cast<size_t>(h >> 56) & (kSets - 1);
  Entry* ways = slots_.ways(set);
  for (size_t w = 0; w < kWays; ++w) {
    Entry& e = ways[w];
    // The hash only picks candidates; every byte is compared, so a collision cannot return
    // another UA's verdict.
    if (e.shape != shape || e.hash != h) continue;
    const char* stored = e.key;
    bool same = true;
    for (std::string_view part : parts) {
      if (!sameBytes(stored, part.data(), part.size())) {
        same = false;
        break;
      }
      stored += part.size();
    }
    if (!same) continue;
    ++stats_.hits;
    slots_.used(set, w);
    *ios = e.ios;
    return e.result;
  }
  ++stats_.misses;
  const UserAgentAnalysis result = analyzeBytes(in, ios);
  const size_t w = slots_.victim(set);
  Entry& e = ways[w];
  if (e.shape != 0) ++stats_.evictions;
  e.hash = h;
  e.shape = shape;
  e.ios = *ios;
  e.result = result;
  char* out = e.key;
  for (std::string_view part : parts) {
    if (part.empty()) continue;  // an absent hint's view may be null: memcpy must not see it
    std::memcpy(out, part.data(), part.size());
    out += part.size();
  }
  slots_.used(set, w);
  return result;
}

UserAgentCache& UserAgentCache::forThisThread() { return perThreadMemo<UserAgentCache>(); }

}  // namespace sluice::risk
