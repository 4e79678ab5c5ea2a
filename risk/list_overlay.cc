#include "risk/list_overlay.h"

#include <algorithm>

namespace sluice::risk {

namespace {
bool live(const ListOverlay::Entry& e, int64_t nowMs) { return e.expiresAtMs == 0 || e.expiresAtMs > nowMs; }
}  // namespace

size_t ListOverlay::add(const std::string& name, ListKind kind, const std::vector<ListEntry>& entries,
                        int64_t expiresAtMs, int64_t nowMs) {
  std::lock_guard<std::mutex> lk(mu_);
  ListState& st = lists_[name];
  if (st.kind != kind) {
    st.entries.clear();
    st.kind = kind;
  }
  size_t added = 0;
  for (const auto& e : entries) {
    auto [it, inserted] = st.entries.try_emplace(e.canonical);
    if (inserted || !live(it->second, nowMs)) {
      ++added;
      it->second.parsed = e;
      it->second.addedAtMs = nowMs;
    }
    it->second.expiresAtMs = expiresAtMs;
  }
  publishLocked(nowMs);
  return added;
}

size_t ListOverlay::remove(const std::string& name, const std::vector<std::string>& canonical) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = lists_.find(name);
  if (it == lists_.end()) return 0;
  size_t removed = 0;
  for (const auto& c : canonical) removed += it->second.entries.erase(c);
  if (removed) publishLocked(0);
  return removed;
}

void ListOverlay::replace(const std::string& name, ListKind kind, std::vector<Entry> entries,
                          int64_t nowMs, int64_t keepSinceMs) {
  std::lock_guard<std::mutex> lk(mu_);
  ListState& st = lists_[name];
  if (st.kind != kind) st.entries.clear();
  st.kind = kind;
  std::map<std::string, Entry, std::less<>> next;
  for (auto& [key, e] : st.entries)
    if (e.addedAtMs >= keepSinceMs) next.emplace(key, e);
  for (auto& e : entries) {
    std::string key = e.parsed.canonical;
    next.insert_or_assign(std::move(key), std::move(e));
  }
  st.entries = std::move(next);
  publishLocked(nowMs);
}

bool ListOverlay::contains(const std::string& name, std::string_view canonical, int64_t nowMs) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = lists_.find(name);
  if (it == lists_.end()) return false;
  auto e = it->second.entries.find(canonical);
  return e != it->second.entries.end() && live(e->second, nowMs);
}

std::vector<ListOverlay::Entry> ListOverlay::entries(const std::string& name, int64_t nowMs) const {
  std::vector<Entry> out;
  std::lock_guard<std::mutex> lk(mu_);
  auto it = lists_.find(name);
  if (it == lists_.end()) return out;
  for (const auto& [_, e] : it->second.entries)
    if (live(e, nowMs)) out.push_back(e);
  std::stable_sort(out.begin(), out.end(),
                   [](const Entry& a, const Entry& b) { return a.addedAtMs < b.addedAtMs; });
  return out;
}

size_t ListOverlay::count(const std::string& name, int64_t nowMs) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = lists_.find(name);
  if (it == lists_.end()) return 0;
  size_t n = 0;
  for (const auto& [_, e] : it->second.entries) n += live(e, nowMs);
  return n;
}

void ListOverlay::publishLocked(int64_t nowMs) const {
  auto snap = std::make_shared<ListOverlaySnapshot>();
  for (auto& [name, st] : lists_) {
    OverlayList ol;
    ol.name = name;
    ol.kind = st.kind;
    for (auto it = st.entries.begin(); it != st.entries.end();) {
      const Entry& e = it->second;
      if (nowMs != 0 && !live(e, nowMs)) {
        it = st.entries.erase(it);
        continue;
      }
      if (e.parsed.isCidr)
        ol.cidrs.add(e.parsed.cidr);
      else
        ol.ids.insert(e.parsed.key);
      ++ol.entries;
      if (e.expiresAtMs != 0) snap->nextExpiryMs_ = std::min(snap->nextExpiryMs_, e.expiresAtMs);
      ++it;
    }
    if (ol.entries) snap->lists_.push_back(std::move(ol));
  }
  snapshot_ = snap->lists_.empty() ? nullptr : std::move(snap);
  version_.fetch_add(1, std::memory_order_release);
}

const ListOverlaySnapshot* ListOverlay::current(int64_t nowMs) const {
  struct Cached {
    const ListOverlay* owner = nullptr;
    uint64_t version = 0;
    std::shared_ptr<const ListOverlaySnapshot> snapshot;
  };
  thread_local Cached cached;
  const uint64_t v = version_.load(std::memory_order_acquire);
  if (v == 0) return nullptr;  // nothing was ever added: the common case costs one load
  if (cached.owner != this || cached.version != v ||
      (cached.snapshot && cached.snapshot->nextExpiryMs() <= nowMs)) {
    std::lock_guard<std::mutex> lk(mu_);
    if (snapshot_ && snapshot_->nextExpiryMs() <= nowMs) publishLocked(nowMs);
    cached.owner = this;
    cached.version = version_.load(std::memory_order_relaxed);
    cached.snapshot = snapshot_;
  }
  return cached.snapshot.get();
}

}  // namespace sluice::risk
