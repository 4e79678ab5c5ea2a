#pragma once
// ListOverlay: entries of the named scalper lists added at run time -- by an operator through the
// admin API, or by another instance through the cluster sync -- on top of the entries the list
// files give. A device farm found at 00:00:07 is blocked at 00:00:08, without editing a file and
// reloading; an entry may carry an expiry ("block this IP for 30 minutes").
//
// Process-wide and outside the configuration snapshot on purpose (like the operator switches):
// a reload re-reads the files and keeps the overlay. Entries are matched as part of the configured
// list of the same name and kind; entries of a list that is no longer configured are kept (a
// reload may bring it back) but match nothing.
//
// Writers (control thread) take a mutex and publish a new immutable snapshot; readers (workers)
// keep a thread-local reference and re-read it only when the version moves, so the data path
// costs one relaxed load while nothing changes.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "risk/scalper_lists.h"

namespace sluice::risk {

// What one list of the overlay holds at one moment. Immutable once published.
struct OverlayList {
  std::string name;
  ListKind kind = ListKind::kIp;
  CidrMatcher cidrs;  // kIp
  FlatHashSet ids;    // other kinds
  size_t entries = 0;
};

class ListOverlaySnapshot {
 public:
  const OverlayList* find(std::string_view name, ListKind kind) const {
    for (const auto& l : lists_)
      if (l.kind == kind && l.name == name) return &l;
    return nullptr;
  }
  const std::vector<OverlayList>& lists() const { return lists_; }
  int64_t nextExpiryMs() const { return nextExpiryMs_; }

 private:
  friend class ListOverlay;
  std::vector<OverlayList> lists_;  // only lists with live entries
  int64_t nextExpiryMs_ = INT64_MAX;
};

class ListOverlay {
 public:
  struct Entry {
    ListEntry parsed;          // canonical text and lookup key
    int64_t addedAtMs = 0;     // wall clock
    int64_t expiresAtMs = 0;   // wall clock; 0 = never
  };

  // Adds entries to list `name` (of `kind`), or refreshes the expiry of ones already there.
  // Entries of the list recorded under another kind are dropped first (the config changed it).
  // Returns how many were new.
  size_t add(const std::string& name, ListKind kind, const std::vector<ListEntry>& entries,
             int64_t expiresAtMs, int64_t nowMs);
  // Removes entries by canonical text; returns how many were there.
  size_t remove(const std::string& name, const std::vector<std::string>& canonical);
  // Replaces the whole list (the cluster sync's full read); expiry per entry. Entries added here
  // at or after `keepSinceMs` stay: they may be newer than the read (it was sent before them).
  void replace(const std::string& name, ListKind kind, std::vector<Entry> entries, int64_t nowMs,
               int64_t keepSinceMs = INT64_MAX);

  bool contains(const std::string& name, std::string_view canonical, int64_t nowMs) const;
  // Live entries of a list, oldest first.
  std::vector<Entry> entries(const std::string& name, int64_t nowMs) const;
  size_t count(const std::string& name, int64_t nowMs) const;

  // The snapshot to match against (null when the overlay is empty). Valid on this thread until
  // its next call. Expired entries stop matching within the call that passes their expiry.
  const ListOverlaySnapshot* current(int64_t nowMs) const;
  uint64_t version() const { return version_.load(std::memory_order_acquire); }

 private:
  struct ListState {
    ListKind kind = ListKind::kIp;
    std::map<std::string, Entry, std::less<>> entries;  // by canonical text
  };
  void publishLocked(int64_t nowMs) const;  // drops expired entries, builds a snapshot

  mutable std::mutex mu_;
  mutable std::map<std::string, ListState, std::less<>> lists_;
  mutable std::shared_ptr<const ListOverlaySnapshot> snapshot_;
  mutable std::atomic<uint64_t> version_{0};
};

}  // namespace sluice::risk
