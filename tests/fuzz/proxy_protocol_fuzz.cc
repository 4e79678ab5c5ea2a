// PROXY protocol v1/v2 headers (proxy/server/proxy_protocol.h). ClientConnection calls the parser
// again on everything buffered each time bytes arrive, so besides never reading out of bounds the
// parser must be prefix-consistent: a prefix of a good header is "incomplete" (never an error, or
// a header split across reads would be refused), and once a header is whole, more bytes change
// nothing about it.
#include <cstring>
#include <string>

#include "proxy/server/proxy_protocol.h"
#include "tests/fuzz/fuzz_common.h"

namespace sluice {
namespace {

using S = ProxyProtocolResult::Status;

// A copy of exactly n bytes, so ASan catches any read past them.
ProxyProtocolResult parseExact(const uint8_t* data, size_t n) {
  std::string copy(reinterpret_cast<const char*>(data), n);
  char* heap = n ? new char[n] : nullptr;
  if (n) memcpy(heap, copy.data(), n);
  ProxyProtocolResult r = parseProxyProtocol(heap, n);
  delete[] heap;
  return r;
}

void sameHeader(const ProxyProtocolResult& a, const ProxyProtocolResult& b) {
  FUZZ_CHECK(a.status == b.status);
  FUZZ_CHECK(a.consumed == b.consumed);
  FUZZ_CHECK(a.has_address == b.has_address);
  if (a.has_address) {
    FUZZ_CHECK(a.source == b.source);
    FUZZ_CHECK(a.source.v4 == b.source.v4);
    FUZZ_CHECK(a.source_port == b.source_port);
  }
}

}  // namespace
}  // namespace sluice

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  ProxyProtocolResult full = parseExact(data, size);
  switch (full.status) {
    case S::kDone:
      FUZZ_CHECK(full.consumed > 0 && full.consumed <= size);
      // v1 lines are at most 107 bytes; v2 blocks at most 16 + 2048 (the parser's own cap, well
      // under the 4096 bytes ClientConnection buffers before giving up).
      FUZZ_CHECK(full.consumed <= 16 + 2048);
      if (full.has_address) {
        // The address the rest of the proxy will trust must print and parse back the same.
        IpAddress again;
        FUZZ_CHECK(IpAddress::parse(full.source.toString(), &again));
        FUZZ_CHECK(again == full.source);
      }
      break;
    case S::kError:
      FUZZ_CHECK(full.error != nullptr && full.error[0] != '\0');
      break;
    case S::kIncomplete:
      FUZZ_CHECK(full.consumed == 0 && !full.has_address);
      break;
  }
  // Every prefix (all of them for short inputs, a sample for long ones).
  size_t step = size <= 300 ? 1 : size / 97 + 1;
  for (size_t n = 0; n < size; n += step) {
    ProxyProtocolResult r = parseExact(data, n);
    if (full.status == S::kDone && n >= full.consumed) {
      sameHeader(r, full);
    } else if (full.status == S::kDone) {
      FUZZ_CHECK(r.status == S::kIncomplete);
    } else if (full.status == S::kIncomplete) {
      FUZZ_CHECK(r.status == S::kIncomplete);
    } else {
      FUZZ_CHECK(r.status != S::kDone);  // an error never follows a whole header
    }
  }
  return 0;
}
