#pragma once
// Requests shaped like real clients' first lines, for the risk tests and benchmark.
#include <string>
#include <vector>

#include "core/strings.h"
#include "risk/risk_request.h"

namespace sluice::risk::testing {

inline const char* kChromeUa =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36";
inline const char* kFirefoxUa =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0";
inline const char* kSafariUa =
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15";

// Chrome 124 navigation over HTTP/1.1, in Chrome's order and case.
inline std::vector<HeaderField> chromeNavigation(const char* ua = kChromeUa) {
  return {{"Host", "shop.example"},
          {"Connection", "keep-alive"},
          {"sec-ch-ua", "\"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\""},
          {"sec-ch-ua-mobile", "?0"},
          {"sec-ch-ua-platform", "\"Windows\""},
          {"Upgrade-Insecure-Requests", "1"},
          {"User-Agent", ua},
          {"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
          {"Sec-Fetch-Site", "none"},
          {"Sec-Fetch-Mode", "navigate"},
          {"Sec-Fetch-User", "?1"},
          {"Sec-Fetch-Dest", "document"},
          {"Accept-Encoding", "gzip, deflate, br, zstd"},
          {"Accept-Language", "en-GB,en;q=0.9"},
          {"Cookie", "sid=abc; cart=1"}};
}

inline std::vector<HeaderField> firefoxNavigation() {
  return {{"Host", "shop.example"},
          {"User-Agent", kFirefoxUa},
          {"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
          {"Accept-Language", "en-GB,en;q=0.5"},
          {"Accept-Encoding", "gzip, deflate, br"},
          {"Connection", "keep-alive"},
          {"Upgrade-Insecure-Requests", "1"},
          {"Sec-Fetch-Dest", "document"},
          {"Sec-Fetch-Mode", "navigate"},
          {"Sec-Fetch-Site", "none"},
          {"Sec-Fetch-User", "?1"}};
}

// python-requests' default order, with the UA swapped for Chrome's.
inline std::vector<HeaderField> pythonOrderChromeUa() {
  return {{"Host", "shop.example"},
          {"User-Agent", kChromeUa},
          {"Accept-Encoding", "gzip, deflate"},
          {"Accept", "*/*"},
          {"Connection", "keep-alive"}};
}

inline RiskRequest makeRequest(std::vector<HeaderField> headers, const char* ip = "192.0.2.10") {
  RiskRequest r;
  r.method = "GET";
  r.path = "/";
  r.headers = std::move(headers);
  IpAddress::parse(ip, &r.clientIp);
  r.wallSeconds = 1700000000;
  return r;
}

}  // namespace sluice::risk::testing

namespace sluice::risk::testing {
inline std::string toLowerCopy(std::string_view s) { return sluice::toLower(s); }
}  // namespace sluice::risk::testing
