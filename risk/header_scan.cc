#include "risk/header_scan.h"

#include <cstring>

#include "core/hash.h"
#include "core/swar.h"

namespace sluice::risk {
namespace {

constexpr std::string_view kNames[kHeaderIdCount] = {
    "",         "host",      "user-agent",       "accept",            "accept-encoding",
    "accept-language", "cookie", "referer",      "sec-ch-ua",         "sec-ch-ua-mobile",
    "sec-ch-ua-platform", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"};

// Header names are read 8 bytes at a time (SWAR): the known names are at most 18 bytes, so a
// name is classified with at most three word compares instead of a byte loop, a copy and a
// memcmp. The per-byte definitions (ASCII 'A'..'Z' only are upper case) are kept exactly.
constexpr size_t kMaxKnown = 18;
constexpr int kWords = 3;  // ceil(kMaxKnown / 8)
using swar::load8;
using swar::loadPartial;
using swar::upperMask;

// A name's first kWords words, zero-padded (only for names of at most kMaxKnown bytes).
struct NameWords {
  uint64_t w[kWords] = {};
  uint64_t upper[kWords] = {};
  bool anyUpper = false;
};

inline void loadName(std::string_view name, NameWords* out) {
  const size_t n = name.size();
  uint64_t any = 0;
  for (int i = 0; i < kWords; ++i) {
    const size_t at = static_cast<size_t>(i) * 8;
    if (at >= n) break;
    const size_t len = n - at < 8 ? n - at : 8;
    out->w[i] = loadPartial(name.data() + at, len);
    out->upper[i] = upperMask(out->w[i]);
    any |= out->upper[i];
  }
  out->anyUpper = any != 0;
}

// Upper-case detection for names of any length (unknown names only need this bit).
bool hasUpper(std::string_view name) {
  const char* p = name.data();
  size_t n = name.size();
  uint64_t any = 0;
  while (n >= 8) {
    any |= upperMask(load8(p));
    p += 8;
    n -= 8;
  }
  if (n) any |= upperMask(loadPartial(p, n));
  return any != 0;
}

// Per known id: its lower-case and Title-Case spellings as zero-padded words.
struct KnownWords {
  uint64_t lower[kHeaderIdCount][kWords] = {};
  uint64_t title[kHeaderIdCount][kWords] = {};
  // Per name length (0..kMaxKnown): the ids of that length, 0-terminated.
  uint8_t byLength[kMaxKnown + 1][4] = {};
  KnownWords() {
    for (int k = 1; k < kHeaderIdCount; ++k) {
      const std::string_view canon = kNames[k];
      char lo[kWords * 8] = {};
      char ti[kWords * 8] = {};
      for (size_t j = 0; j < canon.size(); ++j) {
        lo[j] = canon[j];
        const bool wantUpper = j == 0 || canon[j - 1] == '-';
        ti[j] = wantUpper && canon[j] >= 'a' && canon[j] <= 'z' ? static_cast<char>(canon[j] - 32)
                                                                : canon[j];
      }
      std::memcpy(lower[k], lo, sizeof lo);
      std::memcpy(title[k], ti, sizeof ti);
      uint8_t* slot = byLength[canon.size()];
      while (*slot) ++slot;
      *slot = static_cast<uint8_t>(k);
    }
  }
};

const KnownWords& known() {
  static const KnownWords k;
  return k;
}

// hash64(name, seed) (core/hash.h) from the name's zero-padded words: the full words, then the
// 1-7 byte tail, which is the next word as loaded (a zero word when the length is a multiple of 8).
inline uint64_t hashWords(const NameWords& nw, size_t n, uint64_t seed) {
  uint64_t h = hash64_steps::start(seed);
  const size_t full = n / 8;
  for (size_t i = 0; i < full; ++i) h = hash64_steps::word(h, nw.w[i]);
  return hash64_steps::finish(h, full < kWords ? nw.w[full] : 0, n);
}

inline bool equalWords(const uint64_t* a, const uint64_t* b) {
  return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2])) == 0;
}

// The known id of a name already loaded, kOther when none.
inline HeaderId classifyWords(size_t n, const NameWords& nw, const KnownWords& kw) {
  if (n > kMaxKnown) return HeaderId::kOther;
  const uint8_t* ids = kw.byLength[n];
  if (ids[0] == 0) return HeaderId::kOther;
  // Lower-case: each upper-case byte gets its 0x20 bit (0x80 >> 2).
  const uint64_t lower[kWords] = {nw.w[0] | nw.upper[0] >> 2, nw.w[1] | nw.upper[1] >> 2,
                                  nw.w[2] | nw.upper[2] >> 2};
  for (; *ids; ++ids)
    if (equalWords(lower, kw.lower[*ids])) return static_cast<HeaderId>(*ids);
  return HeaderId::kOther;
}

}  // namespace

std::string_view headerIdName(HeaderId id) { return kNames[static_cast<int>(id)]; }

HeaderId classifyHeader(std::string_view name) {
  bool upper;
  return classifyHeader(name, &upper);
}

HeaderId classifyHeader(std::string_view name, bool* upper) {
  if (name.size() > kMaxKnown) {
    *upper = hasUpper(name);
    return HeaderId::kOther;
  }
  NameWords nw;
  loadName(name, &nw);
  *upper = nw.anyUpper;
  return classifyWords(name.size(), nw, known());
}

HeaderScan HeaderScan::of(const std::vector<HeaderField>& headers) {
  HeaderScan s;
  for (auto& f : s.first) f = -1;
  const KnownWords& kw = known();
  bool anyUpper = false;
  uint64_t names = 0;
  uint32_t others = 0;
  for (size_t i = 0; i < headers.size(); ++i) {
    const std::string_view name = headers[i].first;
    if (name.size() > kMaxKnown) {
      anyUpper = anyUpper || hasUpper(name);
      names = hash64(name, names + 1);
      ++others;
      continue;
    }
    NameWords nw;
    loadName(name, &nw);
    anyUpper |= nw.anyUpper;
    const HeaderId id = classifyWords(name.size(), nw, kw);
    if (id != HeaderId::kCookie && id != HeaderId::kReferer) {
      names = hashWords(nw, name.size(), names + 1);
      ++others;
    }
    if (id == HeaderId::kOther) continue;
    const int k = static_cast<int>(id);
    if (s.first[k] < 0) s.first[k] = static_cast<int32_t>(i);
    if (nw.anyUpper) s.notLower |= bit(id);
    // Title-Case: upper at the start and after '-', lower elsewhere; exactly those bytes.
    if (!equalWords(nw.w, kw.title[k])) s.notTitle |= bit(id);
  }
  s.anyUpper = anyUpper;
  s.namesHash = names;
  s.otherCount = others;
  return s;
}

HeaderScan HeaderScan::ofMemoised(const std::vector<HeaderField>& headers) {
  return HeaderScanMemo::forThisThread().scan(headers);
}

// The names one after another (no separators: the lengths say where each ends), with 8 spare
// bytes so the stored side can always be read a whole word at a time.
struct HeaderScanMemo::Entry {
  uint16_t count = 0;  // names; 0 = empty slot
  uint8_t lengths[kMaxNames] = {};
  HeaderScan scan;
  char names[kMaxNameBytes + 8] = {};
};

HeaderScanMemo::HeaderScanMemo() = default;
HeaderScanMemo::~HeaderScanMemo() = default;

HeaderScan HeaderScanMemo::scan(const std::vector<HeaderField>& headers) {
  const size_t count = headers.size();
  if (count == 0 || count > kMaxNames) {
    ++stats_.uncacheable;
    return HeaderScan::of(headers);
  }
  // The set: from the count and the lengths in order (cheap, and browsers differ in them). Whether
  // the sequence fits an entry is only asked on a miss: a hit's names fit, they equal stored ones.
  uint64_t sig = count;
  for (const HeaderField& h : headers) sig = (sig ^ h.first.size()) * 0x100000001b3ULL;
  const size_t set = static_cast<size_t>(mix64(sig) >> 58) & (kSets - 1);
  Entry* ways = slots_.ways(set);
  for (size_t w = 0; w < kWays; ++w) {
    const Entry& e = ways[w];
    if (e.count != count) continue;
    // Equal lengths so far keep `stored` inside the entry's names (padded by 8). Every name's
    // difference is ORed and tested once (a test per name was ~40 instructions a name).
    const char* stored = e.names;
    uint64_t diff = 0;
    size_t i = 0;
    for (; i < count; ++i) {
      const std::string_view name = headers[i].first;
      if (e.lengths[i] != name.size()) break;
      diff |= swar::diffFromPadded(stored, name.data(), name.size());
      stored += name.size();
    }
    if (i < count || diff != 0) continue;
    ++stats_.hits;
    slots_.used(set, w);
    return e.scan;
  }
  size_t bytes = 0;
  size_t longest = 0;
  for (const HeaderField& h : headers) {
    bytes += h.first.size();
    longest |= h.first.size();
  }
  if (bytes > kMaxNameBytes || longest > 0xff) {
    ++stats_.uncacheable;
    return HeaderScan::of(headers);
  }
  ++stats_.misses;
  const HeaderScan fresh = HeaderScan::of(headers);
  const size_t w = slots_.victim(set);
  Entry& e = ways[w];
  e.count = static_cast<uint16_t>(count);
  e.scan = fresh;
  char* out = e.names;
  for (size_t i = 0; i < count; ++i) {
    const std::string_view name = headers[i].first;
    e.lengths[i] = static_cast<uint8_t>(name.size());
    if (!name.empty()) std::memcpy(out, name.data(), name.size());  // a null view: no memcpy
    out += name.size();
  }
  slots_.used(set, w);
  return fresh;
}

HeaderScanMemo& HeaderScanMemo::forThisThread() { return perThreadMemo<HeaderScanMemo>(); }

}  // namespace sluice::risk
