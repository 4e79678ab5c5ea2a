#include "risk/scalper_lists.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/hash.h"
#include "core/strings.h"
#include "risk/list_overlay.h"

namespace sluice::risk {
namespace {

constexpr size_t kMaxTokenBytes = 256;

// The first `bits` bits of an 8-byte word as loaded from memory (network order, little-endian
// load): all ones from 64, none from 0 or below.
inline uint64_t prefixMask(int bits) {
  if (bits >= 64) return ~uint64_t{0};
  if (bits <= 0) return 0;
  return __builtin_bswap64(~uint64_t{0} << (64 - bits));
}

// hash64 of the 17 bytes (address masked to `prefix` bits, then the prefix as one byte), from two
// masked words: a CIDR probe per prefix length costs a few instructions, not a 16-byte loop.
uint64_t maskedKey(const IpAddress& ip, int prefix) {
  uint64_t lo, hi;
  std::memcpy(&lo, ip.bytes.data(), 8);
  std::memcpy(&hi, ip.bytes.data() + 8, 8);
  uint64_t h = hash64_steps::start(0);
  h = hash64_steps::word(h, lo & prefixMask(prefix));
  h = hash64_steps::word(h, hi & prefixMask(prefix - 64));
  return hash64_steps::finish(h, static_cast<uint8_t>(prefix), 17);
}

uint64_t tokenKey(ListKind kind, std::string_view token) {
  return hash64(token, static_cast<uint64_t>(kind) + 0x51u);
}

}  // namespace

const char* listKindName(ListKind k) {
  switch (k) {
    case ListKind::kIp: return "ip";
    case ListKind::kMember: return "member";
    case ListKind::kDevice: return "device";
    case ListKind::kAddress: return "address";
    case ListKind::kFingerprint: return "fingerprint";
    case ListKind::kTls: return "tls";
  }
  return "ip";
}

bool parseListKind(std::string_view s, ListKind* out) {
  for (ListKind k : {ListKind::kIp, ListKind::kMember, ListKind::kDevice, ListKind::kAddress,
                     ListKind::kFingerprint, ListKind::kTls}) {
    if (s == listKindName(k)) {
      *out = k;
      return true;
    }
  }
  return false;
}

bool parseListEntry(ListKind kind, std::string_view entry, ListEntry* out, std::string* message) {
  out->isCidr = kind == ListKind::kIp;
  if (out->isCidr) {
    if (!Cidr::parse(entry, &out->cidr)) {
      *message = "not an IP address or CIDR: '" + std::string(entry.substr(0, 64)) + "'";
      return false;
    }
    // Canonical text: the masked network, so "10.1.2.3/8" and "10.0.0.0/8" are one entry.
    IpAddress masked = out->cidr.base;
    for (int i = 0; i < 16; ++i) {
      const int bits = out->cidr.prefix - i * 8;
      if (bits >= 8) continue;
      masked.bytes[i] &= bits <= 0 ? 0 : static_cast<uint8_t>(0xff << (8 - bits));
    }
    out->cidr.base = masked;
    out->canonical = masked.toString();
    if (out->cidr.prefix != 128)
      out->canonical += "/" + std::to_string(masked.v4 ? out->cidr.prefix - 96 : out->cidr.prefix);
    out->key = maskedKey(masked, out->cidr.prefix);
    return true;
  }
  if (entry.empty()) {
    *message = "empty entry";
    return false;
  }
  if (entry.size() > kMaxTokenBytes) {
    *message = "entry longer than 256 bytes";
    return false;
  }
  for (char ch : entry) {
    if (ch == ' ' || ch == '\t' || static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
      *message = "entry contains whitespace or a control character";
      return false;
    }
  }
  out->canonical.assign(entry);
  out->key = tokenKey(kind, entry);
  return true;
}

void FlatHashSet::insert(uint64_t key) {
  key = key ? key : 1;
  if ((size_ + 1) * 2 > slots_.size()) grow();
  for (size_t i = static_cast<size_t>(key) & mask_;; i = (i + 1) & mask_) {
    if (slots_[i] == key) return;
    if (slots_[i] == 0) {
      slots_[i] = key;
      ++size_;
      return;
    }
  }
}

void FlatHashSet::grow() {
  std::vector<uint64_t> old = std::move(slots_);
  slots_.assign(old.empty() ? 16 : old.size() * 2, 0);
  mask_ = slots_.size() - 1;
  size_ = 0;
  for (uint64_t k : old)
    if (k) insert(k);
}

void CidrMatcher::add(const Cidr& c) {
  masked_.insert(maskedKey(c.base, c.prefix));
  if (std::find(prefixes_.begin(), prefixes_.end(), c.prefix) == prefixes_.end()) {
    prefixes_.push_back(c.prefix);
    std::sort(prefixes_.begin(), prefixes_.end(), std::greater<int>());
  }
  ++count_;
}

bool CidrMatcher::contains(const IpAddress& ip) const {
  for (int p : prefixes_)
    if (masked_.contains(maskedKey(ip, p))) return true;
  return false;
}

bool ScalperLists::parseInto(const ListSource& src, std::string_view text,
                             std::string_view fileLabel, ScalperList* out, std::string* error) {
  out->name = src.name;
  out->kind = src.kind;
  out->allow = src.allow;
  out->points = src.points;
  size_t lineNo = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    ++lineNo;
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    const size_t lineStart = pos;
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    std::string_view entry = trim(line);
    if (entry.empty()) continue;
    const size_t col = static_cast<size_t>(entry.data() - text.data()) - lineStart + 1;
    auto fail = [&](const std::string& msg) {
      *error = std::string(fileLabel) + ":" + std::to_string(lineNo) + ":" + std::to_string(col) +
               ": " + msg;
      return false;
    };
    ListEntry parsed;
    std::string message;
    if (!parseListEntry(src.kind, entry, &parsed, &message)) return fail(message);
    if (parsed.isCidr)
      out->cidrs.add(parsed.cidr);
    else
      out->ids.insert(parsed.key);
    ++out->entries;
  }
  return true;
}

ScalperListsPtr ScalperLists::fromLists(std::vector<ScalperList> lists) {
  auto out = std::make_shared<ScalperLists>();
  for (const auto& l : lists) out->kindsPresent_ |= static_cast<uint8_t>(1u << static_cast<int>(l.kind));
  out->lists_ = std::move(lists);
  return out;
}

ScalperListsPtr ScalperLists::load(const std::vector<ListSource>& sources, std::string* error) {
  std::vector<ScalperList> lists;
  lists.reserve(sources.size());
  for (const auto& src : sources) {
    std::ifstream in(src.file, std::ios::binary);
    if (!in) {
      *error = src.file + ": cannot open list '" + src.name + "': " + strerror(errno);
      return nullptr;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    ScalperList list;
    if (!parseInto(src, ss.str(), src.file, &list, error)) return nullptr;
    lists.push_back(std::move(list));
  }
  return fromLists(std::move(lists));
}

ListMatch ScalperLists::match(const ListQuery& q, const ListOverlaySnapshot* overlay) const {
  ListMatch m;
  if (lists_.empty()) return m;
  uint64_t keys[6] = {};
  bool have[6] = {};
  const std::string_view tokens[6] = {{}, q.memberId, q.deviceId, q.addressHash, q.fingerprint,
                                      q.tlsFingerprint};
  for (int k = 1; k < 6; ++k) {
    if ((kindsPresent_ & (1u << k)) && !tokens[k].empty()) {
      keys[k] = tokenKey(static_cast<ListKind>(k), tokens[k]);
      have[k] = true;
    }
  }
  for (size_t i = 0; i < lists_.size(); ++i) {
    const ScalperList& l = lists_[i];
    const int k = static_cast<int>(l.kind);
    bool hit = false;
    if (l.kind == ListKind::kIp) {
      hit = q.ip != nullptr && l.cidrs.contains(*q.ip);
    } else {
      hit = have[k] && l.ids.contains(keys[k]);
    }
    if (!hit && overlay) {
      if (const OverlayList* ol = overlay->find(l.name, l.kind))
        hit = l.kind == ListKind::kIp ? q.ip != nullptr && ol->cidrs.contains(*q.ip)
                                      : have[k] && ol->ids.contains(keys[k]);
    }
    if (!hit) continue;
    if (i < 64) m.matchedLists |= uint64_t{1} << i;
    if (l.allow) {
      m.allowed = true;
      if (!m.firstAllow) m.firstAllow = &l;
    } else {
      m.pointsByKind[k] = std::max(m.pointsByKind[k], l.points);
    }
  }
  return m;
}

}  // namespace sluice::risk
