#include "core/redis/scripts.h"

namespace sluice::redis::embedded {
extern const char* const kScript_gcra;
extern const char* const kScript_sliding_window;
extern const char* const kScript_lease_take;
extern const char* const kScript_concurrency_acquire;
extern const char* const kScript_concurrency_release;
extern const char* const kScript_sale_take;
extern const char* const kScript_sale_return;
extern const char* const kScript_spend_once;
}  // namespace sluice::redis::embedded

namespace sluice::redis::scripts {

#define SLUICE_SCRIPT(fn, name)                                                   \
  const RedisScriptPtr& fn() {                                                    \
    static const RedisScriptPtr s = makeRedisScript(#name, embedded::kScript_##name); \
    return s;                                                                     \
  }

SLUICE_SCRIPT(gcra, gcra)
SLUICE_SCRIPT(slidingWindow, sliding_window)
SLUICE_SCRIPT(leaseTake, lease_take)
SLUICE_SCRIPT(concurrencyAcquire, concurrency_acquire)
SLUICE_SCRIPT(concurrencyRelease, concurrency_release)
SLUICE_SCRIPT(saleTake, sale_take)
SLUICE_SCRIPT(saleReturn, sale_return)
SLUICE_SCRIPT(spendOnce, spend_once)
#undef SLUICE_SCRIPT

std::vector<RedisScriptPtr> all() {
  return {gcra(), slidingWindow(), leaseTake(), concurrencyAcquire(), concurrencyRelease(),
          saleTake(), saleReturn(), spendOnce()};
}

bool integers(const RedisReply& reply, int64_t* out, size_t n) {
  if (!reply.isArray() || reply.elements.size() < n) return false;
  for (size_t i = 0; i < n; i++) {
    if (!reply.elementInteger(i, &out[i])) return false;
  }
  return true;
}

}  // namespace sluice::redis::scripts
