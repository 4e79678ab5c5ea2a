#pragma once
// KeyTable: the process-wide state store behind every keyed rule (per IP, per member, per item...).
//
// Shape: a set-associative cache. The table is one array of fixed-size sets (128 bytes, two cache
// lines, by default), allocated once from the rule's `memory:` budget and never grown, so the byte bound
// is exact. A key's 64-bit hash picks one set; the set holds up to kWays entries kept in
// most-recently-used order. A lookup therefore touches a single set (one cache-line miss at millions
// of keys, the adjacent line comes with it), and every set carries its own one-byte spin lock in its
// first line: two threads contend only when they hit the same set, 1 in setCount() for distinct keys.
//
// Keys are the caller's 64-bit hashes (core/hash.h hash64); whole keys are never stored, so a
// 10 KB spoofed header costs the table the same 8 bytes as an IPv4 address.
//
// Eviction happens only when a new key lands in a full set, in this order:
//   1. the least-recently-used *idle* entry (idle = its state is back to "never seen", so dropping
//      it changes no future decision; this is how idle entries expire, with no timers),
//   2. if every entry is active, the one the caller ranks least worth keeping (a rate rule ranks
//      by debt), least recently used among equals, counted in `evictedActive` (the table is too
//      small for the live key set: size it up),
//   3. entries the caller classifies as pinned (in-flight concurrency counts) are never evicted;
//      the insert is refused and counted instead.
// So an abuser with a debt keeps it while idle entries exist in its set, and even when a key
// flood's one-request entries look active (to a worker whose clock reading is a little behind
// the other's, a 4 ms bucket is not yet drained) they go before an abuser's seconds of debt.
// LRU order is exact within a set and approximate across sets, like a CPU cache.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <thread>
#include <type_traits>

#include "core/prefetch.h"

namespace sluice::limiter {

// What the caller's classifier says about an entry, consulted only when choosing a victim.
enum class EntryStatus : uint8_t {
  kIdle,    // equivalent to an absent key: evict first
  kActive,  // holds state that matters: evict only when the whole set is active
  kPinned,  // must never be evicted (something outside the table refers to it)
};

// A classifier may rank instead: 0 is idle, kPinnedWorth pinned, and among the others the least
// worth is evicted first. An EntryStatus classifier ranks every active entry the same (plain LRU).
using EntryWorth = uint64_t;
inline constexpr EntryWorth kPinnedWorth = ~EntryWorth{0};

inline constexpr EntryWorth worthOf(EntryStatus status) {
  return status == EntryStatus::kIdle ? 0 : status == EntryStatus::kActive ? 1 : kPinnedWorth;
}
inline constexpr EntryWorth worthOf(EntryWorth worth) { return worth; }

enum class Lookup : uint8_t { kFindOnly, kFindOrInsert };

// What the caller's update function wants done with the entry afterwards.
enum class EntryAction : uint8_t { kKeep, kErase };

enum class TableResult : uint8_t {
  kFound,     // the key was present; fn ran on its state
  kInserted,  // the key was absent; fn ran on a fresh state (stored unless fn said kErase)
  kMissing,   // absent and Lookup::kFindOnly; fn did not run
  kFull,      // absent and its set holds only pinned entries; fn did not run
};

struct KeyTableStats {
  uint64_t inserts = 0;         // new keys stored
  uint64_t evictedIdle = 0;     // lossless evictions
  uint64_t evictedActive = 0;   // evictions that forgot live state (table too small)
  uint64_t insertsRefused = 0;  // new keys turned away because their set was all pinned
};

namespace detail {

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Test-and-test-and-set: critical sections are a few dozen instructions with no calls out, so
// spinning beats parking; after a while we yield in case the holder was preempted.
inline void lockSlow(std::atomic<uint8_t>& lock) {
  unsigned spins = 0;
  for (;;) {
    while (lock.load(std::memory_order_relaxed) != 0) {
      if (++spins < 256) {
        cpuRelax();
      } else {
        std::this_thread::yield();
      }
    }
    if (lock.exchange(1, std::memory_order_acquire) == 0) return;
  }
}

class SpinGuard {
 public:
  explicit SpinGuard(std::atomic<uint8_t>& lock) : lock_(lock) {
    if (lock_.exchange(1, std::memory_order_acquire) != 0) lockSlow(lock_);
  }
  ~SpinGuard() { lock_.store(0, std::memory_order_release); }
  SpinGuard(const SpinGuard&) = delete;
  SpinGuard& operator=(const SpinGuard&) = delete;

 private:
  std::atomic<uint8_t>& lock_;
};

// Table memory: an anonymous mapping aligned to 2 MB and advised for transparent huge pages, so a
// 16-64 MB table costs the CPU 8-32 TLB entries instead of 4-16 thousand (with 4 KB pages nearly
// every check at a million keys would also miss the TLB). The pages are touched once at
// construction: the budget is committed up front and the data path never page-faults.
void* mapTableMemory(size_t bytes);
void unmapTableMemory(void* memory, size_t bytes);

// Each thread bumps its own stripe of the (rare) insert/evict counters, so a key flood on two
// workers does not bounce one counter line between cores.
inline unsigned threadStripe() {
  static std::atomic<unsigned> next{0};
  thread_local unsigned mine = next.fetch_add(1, std::memory_order_relaxed);
  return mine;
}

}  // namespace detail

template <class State, size_t kSetBytes = 128>
class KeyTable {
  static_assert(std::is_trivially_copyable_v<State>, "entries are moved with memmove");

 public:
  // The key is kept as two 32-bit words so a 12-byte state packs into a 20-byte entry (6 per
  // 128-byte set) instead of being padded to 24.
  struct Entry {
    uint32_t keyWords[2];
    State state;

    uint64_t key() const {
      uint64_t k;
      std::memcpy(&k, keyWords, sizeof k);
      return k;
    }
    void setKey(uint64_t k) { std::memcpy(keyWords, &k, sizeof k); }
  };
  static constexpr size_t kHeaderBytes = 8;
  static constexpr size_t kWays = (kSetBytes - kHeaderBytes) / sizeof(Entry);
  static_assert(kWays >= 2 && kWays <= 255, "a set needs 2..255 ways");

  // `memoryBytes` is the rule's whole budget (`memory: 16m`): the set array takes all of it, in
  // whole sets, at least one.
  explicit KeyTable(size_t memoryBytes)
      : setCount_(setsFor(memoryBytes)),
        sets_(static_cast<Set*>(detail::mapTableMemory(setCount_ * sizeof(Set)))) {
    for (size_t i = 0; i < setCount_; ++i) new (&sets_[i]) Set();
  }
  ~KeyTable() { detail::unmapTableMemory(sets_, setCount_ * sizeof(Set)); }

  // Bytes a table built with `memoryBytes` holds (whole sets, at least one), without building it.
  static size_t memoryFor(size_t memoryBytes) { return setsFor(memoryBytes) * sizeof(Set); }

  KeyTable(const KeyTable&) = delete;
  KeyTable& operator=(const KeyTable&) = delete;

  // Finds `key` (inserting it when absent and `lookup` allows) and runs, under the set's lock,
  //   EntryAction fn(State& state, bool inserted)
  // on its state; a fresh state is value-initialised. `classify(const State&)` returns an
  // EntryStatus or an EntryWorth and is consulted only when a full set needs a victim. fn must be
  // short and must not touch the table.
  template <class Classify, class Fn>
  TableResult apply(uint64_t key, Lookup lookup, Classify&& classify, Fn&& fn) {
    Set& set = setFor(key);
    detail::SpinGuard guard(set.lock);
    Entry* entries = set.entries;
    const unsigned n = set.count.load(std::memory_order_relaxed);
    for (unsigned i = 0; i < n; ++i) {
      if (entries[i].key() != key) continue;
      if (i != 0) {
        // Move to the front: the set is in MRU order, so its tail is the eviction end.
        const Entry hit = entries[i];
        std::memmove(&entries[1], &entries[0], i * sizeof(Entry));
        entries[0] = hit;
      }
      if (fn(entries[0].state, false) == EntryAction::kErase) eraseAt(set, 0, n);
      return TableResult::kFound;
    }
    if (lookup == Lookup::kFindOnly) return TableResult::kMissing;

    // Decide on a fresh state first: a key whose first request leaves nothing to remember (a
    // rejected, uncounted request) must not cost another key its entry.
    State fresh{};
    if (fn(fresh, true) == EntryAction::kErase) return TableResult::kInserted;

    Stripe& stripe = stripes_[detail::threadStripe() % kStripes];
    if (n < kWays) {
      std::memmove(&entries[1], &entries[0], n * sizeof(Entry));
      set.count.store(static_cast<uint8_t>(n + 1), std::memory_order_relaxed);
    } else {
      int idle = -1;
      int active = -1;
      EntryWorth least = kPinnedWorth;
      for (int i = static_cast<int>(n) - 1; i >= 0; --i) {  // LRU end first
        const EntryWorth worth = worthOf(classify(static_cast<const State&>(entries[i].state)));
        if (worth == 0) {
          idle = i;
          break;
        }
        if (worth < least) {  // strict: the less recently used wins a tie
          least = worth;
          active = i;
        }
      }
      int victim = idle;
      if (victim < 0) {
        if (active < 0) {
          stripe.insertsRefused.fetch_add(1, std::memory_order_relaxed);
          return TableResult::kFull;
        }
        victim = active;
        stripe.evictedActive.fetch_add(1, std::memory_order_relaxed);
      } else {
        stripe.evictedIdle.fetch_add(1, std::memory_order_relaxed);
      }
      std::memmove(&entries[1], &entries[0], static_cast<size_t>(victim) * sizeof(Entry));
    }
    entries[0].setKey(key);
    entries[0].state = fresh;
    stripe.inserts.fetch_add(1, std::memory_order_relaxed);
    return TableResult::kInserted;
  }

  // Starts loading the key's set into the cache. The limit phase prefetches every rule's set
  // before checking the first, so a request's N rule checks overlap their cache misses.
  void prefetch(uint64_t key) const {
    const char* line = reinterpret_cast<const char*>(&setFor(key));
    prefetchLine(line);
    if constexpr (sizeof(Set) > 64) prefetchLine(line + 64);
  }

  // Runs fn(const State&) on the key's state without changing it or its recency.
  template <class Fn>
  bool read(uint64_t key, Fn&& fn) const {
    Set& set = setFor(key);
    detail::SpinGuard guard(set.lock);
    const unsigned n = set.count.load(std::memory_order_relaxed);
    for (unsigned i = 0; i < n; ++i) {
      if (set.entries[i].key() == key) {
        fn(static_cast<const State&>(set.entries[i].state));
        return true;
      }
    }
    return false;
  }

  // Entries stored, idle or not. Lock-free scan: a metrics figure, not an exact snapshot.
  size_t liveEntries() const {
    size_t total = 0;
    for (size_t i = 0; i < setCount_; ++i) total += sets_[i].count.load(std::memory_order_relaxed);
    return total;
  }

  // Entries for which pred(const State&) holds, e.g. the non-idle ones ("live keys").
  template <class Pred>
  size_t countIf(Pred&& pred) const {
    size_t total = 0;
    for (size_t s = 0; s < setCount_; ++s) {
      Set& set = sets_[s];
      detail::SpinGuard guard(set.lock);
      const unsigned n = set.count.load(std::memory_order_relaxed);
      for (unsigned i = 0; i < n; ++i) total += pred(static_cast<const State&>(set.entries[i].state));
    }
    return total;
  }

  // Drops every entry classified idle; returns how many. Optional housekeeping (eviction already
  // prefers idle entries), useful before reading live-key metrics.
  template <class Classify>
  size_t sweep(Classify&& classify) {
    size_t dropped = 0;
    for (size_t s = 0; s < setCount_; ++s) {
      Set& set = sets_[s];
      detail::SpinGuard guard(set.lock);
      unsigned n = set.count.load(std::memory_order_relaxed);
      for (unsigned i = n; i-- > 0;) {
        if (worthOf(classify(static_cast<const State&>(set.entries[i].state))) == 0) {
          eraseAt(set, i, n);
          --n;
          ++dropped;
        }
      }
    }
    return dropped;
  }

  void clear() {
    for (size_t s = 0; s < setCount_; ++s) {
      detail::SpinGuard guard(sets_[s].lock);
      sets_[s].count.store(0, std::memory_order_relaxed);
    }
  }

  KeyTableStats stats() const {
    KeyTableStats out;
    for (const Stripe& s : stripes_) {
      out.inserts += s.inserts.load(std::memory_order_relaxed);
      out.evictedIdle += s.evictedIdle.load(std::memory_order_relaxed);
      out.evictedActive += s.evictedActive.load(std::memory_order_relaxed);
      out.insertsRefused += s.insertsRefused.load(std::memory_order_relaxed);
    }
    return out;
  }

  size_t capacity() const { return setCount_ * kWays; }
  size_t setCount() const { return setCount_; }
  // Bytes the table holds for entries; fixed at construction.
  size_t memoryBytes() const { return setCount_ * sizeof(Set); }
  static constexpr size_t bytesPerSlot() { return sizeof(Set) / kWays; }

 private:
  struct alignas(64) Set {
    // Guards this set only. mutable: readers lock too.
    mutable std::atomic<uint8_t> lock{0};
    // Entries [0, count) are live, most recently used first. Atomic so stats can scan unlocked.
    std::atomic<uint8_t> count{0};
    uint8_t reserved[kHeaderBytes - 2] = {};
    Entry entries[kWays];
  };
  static_assert(offsetof(Set, entries) == kHeaderBytes);

  struct alignas(64) Stripe {
    std::atomic<uint64_t> inserts{0};
    std::atomic<uint64_t> evictedIdle{0};
    std::atomic<uint64_t> evictedActive{0};
    std::atomic<uint64_t> insertsRefused{0};
  };
  static constexpr size_t kStripes = 16;

  static size_t setsFor(size_t memoryBytes) {
    return memoryBytes / sizeof(Set) > 0 ? memoryBytes / sizeof(Set) : 1;
  }

  Set& setFor(uint64_t key) const {
    // Fibonacci multiply, then multiply-shift range reduction: spreads even sequential keys (raw
    // IPv4 addresses) over all sets, for any set count, without a division.
    const uint64_t mixed = key * 0x9E3779B97F4A7C15ULL;
    const size_t index =
        static_cast<size_t>((static_cast<unsigned __int128>(mixed) * setCount_) >> 64);
    return sets_[index];
  }

  static void eraseAt(Set& set, unsigned i, unsigned n) {
    std::memmove(&set.entries[i], &set.entries[i + 1], (n - 1 - i) * sizeof(Entry));
    set.count.store(static_cast<uint8_t>(n - 1), std::memory_order_relaxed);
  }

  static_assert(std::is_trivially_destructible_v<Set>, "the mapping is released without destructors");

  const size_t setCount_;
  Set* const sets_;
  Stripe stripes_[kStripes];
};

}  // namespace sluice::limiter
