#include "risk/user_agent.h"

#include <algorithm>
#include <cstring>

#include "core/strings.h"

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
  std::string_view before;
  std::string_view after;
};

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
  std::initializer_list<std::string_view> exactCase;
};

const BrowserProfile kProfiles[] = {
    {BrowserFamily::kChrome, true, 89,
     {{"sec-ch-ua", "user-agent"}, {"user-agent", "accept-encoding"}, {"accept", "accept-encoding"},
      {"accept-encoding", "accept-language"}, {"sec-fetch-site", "sec-fetch-mode"},
      {"sec-fetch-mode", "sec-fetch-dest"}},
     {"sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform", "User-Agent"}},
    {BrowserFamily::kEdge, true, 89,
     {{"sec-ch-ua", "user-agent"}, {"user-agent", "accept-encoding"}, {"accept", "accept-encoding"},
      {"accept-encoding", "accept-language"}, {"sec-fetch-site", "sec-fetch-mode"},
      {"sec-fetch-mode", "sec-fetch-dest"}},
     {"sec-ch-ua", "sec-ch-ua-mobile", "sec-ch-ua-platform", "User-Agent"}},
    // Firefox: User-Agent right after Host, Accept-Language before Accept-Encoding, Sec-Fetch-Dest
    // first of the fetch metadata; never client hints.
    {BrowserFamily::kFirefox, false, 0,
     {{"user-agent", "accept"}, {"accept", "accept-language"}, {"accept-language", "accept-encoding"},
      {"sec-fetch-dest", "sec-fetch-mode"}, {"sec-fetch-mode", "sec-fetch-site"}},
     {"User-Agent"}},
    // Safari: Accept before User-Agent; never client hints.
    {BrowserFamily::kSafari, false, 0,
     {{"accept", "user-agent"}, {"accept", "accept-encoding"}},
     {"User-Agent"}},
};

const BrowserProfile* profileFor(BrowserFamily f) {
  for (const auto& p : kProfiles)
    if (p.family == f) return &p;
  return nullptr;
}

int parseMajorAfter(std::string_view ua, std::string_view token) {
  size_t pos = ua.find(token);
  if (pos == std::string_view::npos) return -1;
  pos += token.size();
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

bool allLowerCase(const std::vector<HeaderField>& headers) {
  for (const auto& h : headers)
    for (char c : h.first)
      if (c >= 'A' && c <= 'Z') return false;
  return true;
}

void checkHeaderOrder(const RiskRequest& r, const BrowserProfile& p, UserAgentAnalysis* out) {
  // Position of each rule's names: one pass over the headers per rule is fine for ~20 headers.
  auto indexOf = [&](std::string_view name) -> int {
    for (size_t i = 0; i < r.headers.size(); ++i)
      if (equalsIgnoreCase(r.headers[i].first, name)) return static_cast<int>(i);
    return -1;
  };
  for (const auto& rule : p.order) {
    int a = indexOf(rule.before);
    int b = indexOf(rule.after);
    if (a >= 0 && b >= 0 && a > b) {
      out->headerOrderMismatch = true;
      out->orderMismatchReason = "header order differs from the claimed browser";
      return;
    }
  }
  if (indexOf("accept-language") < 0) {
    out->headerOrderMismatch = true;
    out->orderMismatchReason = "browser request without Accept-Language";
    return;
  }
  // HTTP/2 names are lower case by rule, and a terminator that downgrades keeps them so.
  if (r.httpMajor == 1 && !allLowerCase(r.headers)) {
    for (std::string_view want : p.exactCase) {
      for (const auto& h : r.headers) {
        if (equalsIgnoreCase(h.first, want) && h.first != want) {
          out->headerOrderMismatch = true;
          out->orderMismatchReason = "header name case differs from the claimed browser";
          return;
        }
      }
    }
  }
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

UserAgentAnalysis UserAgentAnalysis::analyze(const RiskRequest& r) {
  UserAgentAnalysis out;
  std::string_view rawUa;
  std::string_view chUa, chMobile, chPlatform;
  bool haveUa = false, haveChUa = false, haveMobile = false, havePlatform = false;
  for (const auto& [name, value] : r.headers) {
    if (!haveUa && equalsIgnoreCase(name, "user-agent")) {
      rawUa = value;
      haveUa = true;
    } else if (!haveChUa && equalsIgnoreCase(name, "sec-ch-ua")) {
      chUa = value;
      haveChUa = true;
    } else if (!haveMobile && equalsIgnoreCase(name, "sec-ch-ua-mobile")) {
      chMobile = value;
      haveMobile = true;
    } else if (!havePlatform && equalsIgnoreCase(name, "sec-ch-ua-platform")) {
      chPlatform = value;
      havePlatform = true;
    }
  }
  rawUa = trim(rawUa);
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

  for (std::string_view t : kHeadlessTokens) {
    if (ua.find(t) != std::string_view::npos) {
      out.headless = true;
      out.automationToken = t;
      break;
    }
  }
  if (!out.headless) {
    for (std::string_view t : kAutomationTokens) {
      if (ua.find(t) != std::string_view::npos) {
        out.automation = true;
        out.automationToken = t;
        break;
      }
    }
  }

  // Claimed browser. Order matters: Edge's UA also says Chrome and Safari, Chrome's says Safari.
  int v;
  if ((v = parseMajorAfter(orig, "Edg/")) >= 0) {
    out.family = BrowserFamily::kEdge;
  } else if ((v = parseMajorAfter(orig, "HeadlessChrome/")) >= 0 ||
             (v = parseMajorAfter(orig, "Chrome/")) >= 0 ||
             (v = parseMajorAfter(orig, "CriOS/")) >= 0) {
    out.family = BrowserFamily::kChrome;
  } else if ((v = parseMajorAfter(orig, "Firefox/")) >= 0 ||
             (v = parseMajorAfter(orig, "FxiOS/")) >= 0) {
    out.family = BrowserFamily::kFirefox;
  } else if (orig.find("Safari/") != std::string_view::npos &&
             (v = parseMajorAfter(orig, "Version/")) >= 0) {
    out.family = BrowserFamily::kSafari;
  }
  if (out.family != BrowserFamily::kUnknown) out.majorVersion = v;
  // An HTTP library's UA is not a browser claim, even if it mentions one.
  if (out.automation) out.family = BrowserFamily::kUnknown;
  out.mobile = orig.find("Mobile") != std::string_view::npos;
  // iOS browsers are all WebKit underneath: no client hints whatever the brand says.
  const bool ios = orig.find("iPhone") != std::string_view::npos ||
                   orig.find("iPad") != std::string_view::npos;

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
      const bool android = orig.find("Android") != std::string_view::npos;
      bool agrees = true;
      if (p == "Windows") agrees = orig.find("Windows NT") != std::string_view::npos;
      else if (p == "macOS") agrees = orig.find("Macintosh") != std::string_view::npos;
      else if (p == "Android") agrees = android;
      else if (p == "Linux") agrees = !android && orig.find("Linux") != std::string_view::npos;
      else if (p == "Chrome OS" || p == "Chromium OS") agrees = orig.find("CrOS") != std::string_view::npos;
      if (!agrees) out.hintsPlatformMismatch = true;
    }
  }

  if (const BrowserProfile* profile = profileFor(f); profile != nullptr && !ios) {
    checkHeaderOrder(r, *profile, &out);
  }
  return out;
}

}  // namespace sluice::risk
