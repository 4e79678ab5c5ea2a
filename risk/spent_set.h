#pragma once
// SpentSet: remembers which challenge tickets and verifier submissions were already used, until
// they expire, so each is accepted once. A byte-bounded limiter::KeyTable keyed by the id's
// hash64; an expired id is idle (evicted first). Size it for the tickets issued per ticket TTL:
// if live ids are evicted (stats().evictedActive > 0) a replay inside the TTL could pass.
#include <cstdint>
#include <string_view>

#include "limiter/key_table.h"

namespace sluice::risk {

class SpentSet {
 public:
  explicit SpentSet(size_t memoryBytes) : table_(memoryBytes) {}

  // True the first time `id` is presented before `expiresAtUnix`; false for a replay.
  bool markSpent(std::string_view id, int64_t expiresAtUnix, int64_t nowUnix);
  bool isSpent(std::string_view id, int64_t nowUnix) const;
  limiter::KeyTableStats stats() const { return table_.stats(); }

 private:
  struct Entry {
    int64_t expiresAt = 0;
  };
  limiter::KeyTable<Entry, 128> table_;
};

}  // namespace sluice::risk
