// Header-order fingerprint and User-Agent analysis on arbitrary header lists: the fingerprint
// always has its documented 34-character shape, and neither ever crashes. Input: lines
// "name:value" separated by '\n'; the first two bytes pick the method and HTTP version.
#include <string>
#include <vector>

#include "risk/header_order_fingerprint.h"
#include "risk/user_agent.h"
#include "tests/fuzz/fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice::risk;
  if (size > 16384) return -1;
  sluice::fuzz::Knobs knobs(data, size);
  static const char* kMethods[] = {"GET", "POST", "HEAD", "X", "", "PUT"};
  const uint8_t m = knobs.byte();
  const uint8_t v = knobs.byte();
  const std::string body(knobs.rest());
  RiskRequest r;
  r.method = kMethods[m % 6];
  r.httpMajor = v & 3;
  r.httpMinor = (v >> 2) & 1;
  size_t pos = 0;
  while (pos <= body.size() && r.headers.size() < 200) {
    size_t end = body.find('\n', pos);
    if (end == std::string::npos) end = body.size();
    std::string_view line(body.data() + pos, end - pos);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) r.headers.push_back({line, {}});
    else r.headers.push_back({line.substr(0, colon), line.substr(colon + 1)});
    pos = end + 1;
  }
  const HeaderOrderFingerprint fp = HeaderOrderFingerprint::compute(r);
  FUZZ_CHECK(fp.text.size() == 34);
  FUZZ_CHECK(fp.text[8] == '_' && fp.text[21] == '_');
  for (char c : fp.text) FUZZ_CHECK(c > 0x20 && c < 0x7f);
  FUZZ_CHECK(fp.headerCount <= 99);
  const UserAgentAnalysis ua = UserAgentAnalysis::analyze(r);
  if (ua.automation) FUZZ_CHECK(!ua.claimsBrowser());
  return 0;
}
