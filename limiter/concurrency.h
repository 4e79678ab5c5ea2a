#pragma once
// Concurrency ("active requests") limits. A request that gets in holds a ConcurrencySlot; the slot
// gives itself back in its destructor, so whatever ends the request (response sent, client abort,
// upstream timeout, an error path nobody thought of) releases it exactly once. There is no
// release() call site to forget.
#include <atomic>
#include <cstdint>
#include <memory>

#include "core/clock.h"
#include "limiter/key_table.h"

namespace sluice::limiter {

// Whoever hands out slots. Non-owning: the owner must outlive its slots (the request keeps the
// rule generation that owns the limiter alive).
class SlotOwner {
 public:
  virtual void releaseSlot(uint64_t key) = 0;

 protected:
  ~SlotOwner() = default;
};

class ConcurrencySlot {
 public:
  ConcurrencySlot() = default;
  ConcurrencySlot(SlotOwner* owner, uint64_t key) : owner_(owner), key_(key) {}
  ~ConcurrencySlot() { release(); }

  ConcurrencySlot(ConcurrencySlot&& other) noexcept : owner_(other.owner_), key_(other.key_) {
    other.owner_ = nullptr;
  }
  ConcurrencySlot& operator=(ConcurrencySlot&& other) noexcept {
    if (this != &other) {
      release();
      owner_ = other.owner_;
      key_ = other.key_;
      other.owner_ = nullptr;
    }
    return *this;
  }
  ConcurrencySlot(const ConcurrencySlot&) = delete;
  ConcurrencySlot& operator=(const ConcurrencySlot&) = delete;

  // Early release (e.g. the response headers are out and the upstream is done). Idempotent.
  void release() {
    if (owner_ != nullptr) {
      SlotOwner* owner = owner_;
      owner_ = nullptr;
      owner->releaseSlot(key_);
    }
  }

  bool held() const { return owner_ != nullptr; }
  explicit operator bool() const { return held(); }

 private:
  SlotOwner* owner_ = nullptr;
  uint64_t key_ = 0;
};

enum class AcquireStatus : uint8_t {
  kAcquired,
  kAtLimit,    // the key already has `limit` requests in flight
  kTableFull,  // keyed limiter: the key's set is all pinned by in-flight keys (size memory up)
};

struct AcquireResult {
  ConcurrencySlot slot;
  AcquireStatus status = AcquireStatus::kAtLimit;
  uint32_t inFlight = 0;  // for the key, after this call
  uint32_t limit = 0;

  bool acquired() const { return status == AcquireStatus::kAcquired; }
};

// Anything that admits by concurrency: per route, per pool, per key, adaptive. `key` is ignored by
// unkeyed gates; `now` is for adaptive ones.
// Takes a slot on an unkeyed in-flight counter when it is below `limit`; the slot gives itself
// back to `owner`. Shared by the fixed and the adaptive limits.
AcquireResult acquireBelow(std::atomic<uint32_t>& inFlight, uint32_t limit, SlotOwner* owner);

class ConcurrencyGate {
 public:
  virtual ~ConcurrencyGate() = default;
  virtual AcquireResult tryAcquire(uint64_t key, Nanos now) = 0;
  // Starts loading the key's state into the cache (see KeyTable::prefetch). Optional.
  virtual void prefetch(uint64_t /*key*/) const {}
};

// One counter: in-flight requests of a route or an upstream pool. Lock-free.
class ConcurrencyLimiter final : public ConcurrencyGate, public SlotOwner {
 public:
  explicit ConcurrencyLimiter(uint32_t limit) : limit_(limit) {}

  AcquireResult tryAcquire(uint64_t key = 0, Nanos now = 0) override;
  // Takes effect for later acquisitions; requests already in keep their slots.
  void setLimit(uint32_t limit) { limit_.store(limit, std::memory_order_relaxed); }
  uint32_t limit() const { return limit_.load(std::memory_order_relaxed); }
  uint32_t inFlight() const { return inFlight_.load(std::memory_order_relaxed); }

 private:
  void releaseSlot(uint64_t) override { inFlight_.fetch_sub(1, std::memory_order_release); }

  std::atomic<uint32_t> limit_;
  alignas(64) std::atomic<uint32_t> inFlight_{0};
};

// In-flight requests per key (member, IP, any key) in a byte-bounded table. A key with requests in
// flight is pinned (never evicted, its count must stay exact until every slot is back); a key
// whose count drops to 0 is removed at once, so the table holds in-flight keys only.
class KeyedConcurrencyLimiter final : public ConcurrencyGate, public SlotOwner {
 public:
  struct State {
    uint32_t inFlight = 0;  // 12-byte entries: 10 keys per 128-byte set
  };
  using Table = KeyTable<State, 128>;

  KeyedConcurrencyLimiter(uint32_t limitPerKey, size_t memoryBytes)
      : limit_(limitPerKey), table_(memoryBytes) {}

  AcquireResult tryAcquire(uint64_t key, Nanos now = 0) override;
  void prefetch(uint64_t key) const override { table_.prefetch(key); }
  uint32_t inFlight(uint64_t key) const;
  size_t keysInFlight() const { return table_.liveEntries(); }
  void setLimit(uint32_t limit) { limit_.store(limit, std::memory_order_relaxed); }
  const Table& table() const { return table_; }

 private:
  void releaseSlot(uint64_t key) override;

  std::atomic<uint32_t> limit_;
  Table table_;
};

}  // namespace sluice::limiter
