#pragma once
// ScalperLists: the operator's named lists of known scalpers (and allow lists), loaded from text
// files into one immutable snapshot. A reload builds a new snapshot and swaps the pointer; a
// request keeps the one it started with.
//
// File format: one entry per line; '#' starts a comment; blank lines are skipped; surrounding
// spaces are trimmed. By kind:
//   ip           an address or CIDR ("203.0.113.7", "198.51.100.0/24", "2001:db8::/32")
//   member, device, address, fingerprint, tls
//                an opaque token (no spaces, at most 256 bytes): a member id, a device id, a
//                shipping-address hash, a header-order fingerprint text, a TLS fingerprint
// A bad line is reported as "file:line:col: message" and fails the whole load.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/ip.h"

namespace sluice::risk {

enum class ListKind : uint8_t { kIp, kMember, kDevice, kAddress, kFingerprint, kTls };
const char* listKindName(ListKind k);
bool parseListKind(std::string_view s, ListKind* out);

// A set of non-zero 64-bit hashes in one flat open-addressing array (linear probing, load <= 1/2):
// a lookup is usually one cache line, where std::unordered_set costs a bucket load plus a node
// load. Keys are already well-mixed hash64 values; 0 marks an empty slot, so a 0 key is stored
// as 1 (both sides remap, so membership is unchanged). Built once, read-only after.
class FlatHashSet {
 public:
  void insert(uint64_t key);
  bool contains(uint64_t key) const {
    if (slots_.empty()) return false;
    key = key ? key : 1;
    for (size_t i = static_cast<size_t>(key) & mask_;; i = (i + 1) & mask_) {
      const uint64_t s = slots_[i];
      if (s == key) return true;
      if (s == 0) return false;
    }
  }
  size_t count(uint64_t key) const { return contains(key) ? 1 : 0; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t capacity() const { return slots_.size(); }

 private:
  void grow();
  std::vector<uint64_t> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Exact-match CIDR lookup in O(distinct prefix lengths): one hash probe per prefix length in use
// (a list of 100k /32s and /24s costs two probes), instead of CidrSet's linear scan.
class CidrMatcher {
 public:
  void add(const Cidr& c);
  bool contains(const IpAddress& ip) const;
  size_t size() const { return count_; }

 private:
  std::vector<int> prefixes_;  // distinct prefix lengths, longest first
  FlatHashSet masked_;  // hash of (prefix, masked address)
  size_t count_ = 0;
};

// One entry as a list file's line or the admin API gives it (trimmed): its canonical text (an IP
// entry's masked network, "10.0.0.0/8" for "10.1.2.3/8") and the key lookups use.
struct ListEntry {
  bool isCidr = false;
  Cidr cidr;            // isCidr
  uint64_t key = 0;     // tokens: hash64 of the token; CIDRs: hash of (prefix, network)
  std::string canonical;
};
// False plus a message without a position ("not an IP address or CIDR: 'x'") when invalid.
bool parseListEntry(ListKind kind, std::string_view entry, ListEntry* out, std::string* message);

class ListOverlaySnapshot;

struct ScalperList {
  std::string name;
  ListKind kind = ListKind::kIp;
  bool allow = false;  // an allow list: a match lets the request through unscored-for-action
  int points = 100;    // added when a block list matches
  CidrMatcher cidrs;                  // kIp
  FlatHashSet ids;                    // every other kind: hash64 of the token
  size_t entries = 0;
};

// Where one list comes from (the `risk.lists` config entries).
struct ListSource {
  std::string name;
  ListKind kind = ListKind::kIp;
  std::string file;
  bool allow = false;
  int points = 100;
};

// What a request presents to the lists.
struct ListQuery {
  const IpAddress* ip = nullptr;
  std::string_view memberId, deviceId, addressHash, fingerprint, tlsFingerprint;
};

struct ListMatch {
  uint64_t matchedLists = 0;  // bit i: list i matched (first 64 lists)
  bool allowed = false;       // some allow list matched
  int pointsByKind[6] = {};   // highest points among matching block lists, per ListKind
  const ScalperList* firstAllow = nullptr;
};

class ScalperLists;
using ScalperListsPtr = std::shared_ptr<const ScalperLists>;

class ScalperLists {
 public:
  // Loads every source; null plus *error ("file:line:col: message", or "file: cannot open") on
  // the first bad file.
  static ScalperListsPtr load(const std::vector<ListSource>& sources, std::string* error);
  // One list from text already in memory; `fileLabel` names it in errors. Appends to `lists`.
  static bool parseInto(const ListSource& source, std::string_view text,
                        std::string_view fileLabel, ScalperList* out, std::string* error);
  static ScalperListsPtr fromLists(std::vector<ScalperList> lists);

  // `overlay`: entries operators added at run time (list_overlay.h), matched as part of the
  // configured list of the same name and kind; null when there are none.
  ListMatch match(const ListQuery& q, const ListOverlaySnapshot* overlay = nullptr) const;
  const std::vector<ScalperList>& lists() const { return lists_; }
  bool empty() const { return lists_.empty(); }

 private:
  std::vector<ScalperList> lists_;
  uint8_t kindsPresent_ = 0;  // bit per ListKind, to skip hashing ids no list asks about
};

}  // namespace sluice::risk
