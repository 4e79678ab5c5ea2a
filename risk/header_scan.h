#pragma once
// HeaderScan: one pass over a request's header names that finds the handful the risk checks care
// about (User-Agent, client hints, fetch metadata, Cookie...), so the UA analysis, the header-order
// profile check, the pass-token cookie lookup and the fingerprint do not each rescan every name
// case-insensitively. Names are classified by length first, then one case-folded compare.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "risk/risk_request.h"
#include "risk/two_way_sets.h"

namespace sluice::risk {

enum class HeaderId : uint8_t {
  kOther = 0,
  kHost,
  kUserAgent,
  kAccept,
  kAcceptEncoding,
  kAcceptLanguage,
  kCookie,
  kReferer,
  kSecChUa,
  kSecChUaMobile,
  kSecChUaPlatform,
  kSecFetchSite,
  kSecFetchMode,
  kSecFetchDest,
  kCount
};
constexpr int kHeaderIdCount = static_cast<int>(HeaderId::kCount);

// The known header a name is (case-insensitively), or kOther.
HeaderId classifyHeader(std::string_view name);
// The same, also telling whether the name has an upper-case letter (one pass for both).
HeaderId classifyHeader(std::string_view name, bool* hasUpper);
// The lower-case spelling of a known header ("" for kOther).
std::string_view headerIdName(HeaderId id);

struct HeaderScan {
  int32_t first[kHeaderIdCount];  // wire index of the first occurrence, -1 when absent
  uint32_t notLower = 0;  // bit per id: some occurrence has an upper-case letter
  uint32_t notTitle = 0;  // bit per id: some occurrence is not exactly Title-Case ("User-Agent")
  bool anyUpper = false;  // some header name, known or not, has an upper-case letter
  // The header-order fingerprint's name part (risk/header_order_fingerprint.h), from the same
  // pass: the chained hash64 of the names other than Cookie and Referer, in wire order and
  // original case, and how many there are.
  uint64_t namesHash = 0;
  uint32_t otherCount = 0;

  static HeaderScan of(const std::vector<HeaderField>& headers);
  // The same answer through this thread's HeaderScanMemo (what evaluate() uses).
  static HeaderScan ofMemoised(const std::vector<HeaderField>& headers);

  int index(HeaderId id) const { return first[static_cast<int>(id)]; }
  bool has(HeaderId id) const { return index(id) >= 0; }
  static uint32_t bit(HeaderId id) { return uint32_t{1} << static_cast<int>(id); }
  // Value of the first occurrence, empty when absent.
  std::string_view value(const std::vector<HeaderField>& headers, HeaderId id) const {
    const int i = index(id);
    return i >= 0 ? headers[static_cast<size_t>(i)].second : std::string_view{};
  }
};

// A per-thread memo of HeaderScan::of. The scan is a pure function of the header names (their
// bytes, case and order; values are never read), and clients repeat a few dozen name sequences
// (one per browser and request kind), while a fresh scan classifies and hashes every name
// (~140 instructions each). The whole name sequence is stored and compared byte for byte, the
// length signature only picks the set, so a hit is exactly the scan of() would compute. Fixed
// size: kSets x kWays entries (~75 KB, allocated on a thread's first use), two-way LRU per set;
// sequences of more than kMaxNames names or kMaxNameBytes bytes are scanned and not stored. It
// reads no configuration, so a reload has nothing to invalidate. Not thread-safe: one per thread.
class HeaderScanMemo {
 public:
  static constexpr size_t kWays = kMemoWays;
  static constexpr size_t kSets = 64;
  static constexpr size_t kMaxNames = 32;
  static constexpr size_t kMaxNameBytes = 448;

  struct Stats {
    uint64_t hits = 0;
    uint64_t misses = 0;
    uint64_t uncacheable = 0;  // no names, too many or too long: scanned, not stored
  };

  HeaderScanMemo();
  ~HeaderScanMemo();
  HeaderScanMemo(const HeaderScanMemo&) = delete;
  HeaderScanMemo& operator=(const HeaderScanMemo&) = delete;

  HeaderScan scan(const std::vector<HeaderField>& headers);
  const Stats& stats() const { return stats_; }

  static HeaderScanMemo& forThisThread();

 private:
  struct Entry;
  TwoWaySets<Entry, kSets> slots_;
  Stats stats_;
};

}  // namespace sluice::risk
