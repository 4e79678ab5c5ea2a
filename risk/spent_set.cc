#include "risk/spent_set.h"

#include "core/hash.h"

namespace sluice::risk {
namespace {
constexpr uint64_t kSeed = 0x5e47;
}

bool SpentSet::markSpent(std::string_view id, int64_t expiresAt, int64_t now) {
  bool first = false;
  auto classify = [now](const Entry& e) {
    return e.expiresAt <= now ? limiter::EntryStatus::kIdle : limiter::EntryStatus::kActive;
  };
  table_.apply(hash64(id, kSeed), limiter::Lookup::kFindOrInsert, classify,
               [&](Entry& e, bool inserted) {
                 if (inserted || e.expiresAt <= now) {
                   first = true;
                   e.expiresAt = expiresAt;
                 }
                 return limiter::EntryAction::kKeep;
               });
  return first;
}

bool SpentSet::isSpent(std::string_view id, int64_t now) const {
  bool spent = false;
  table_.read(hash64(id, kSeed), [&](const Entry& e) { spent = e.expiresAt > now; });
  return spent;
}

}  // namespace sluice::risk
