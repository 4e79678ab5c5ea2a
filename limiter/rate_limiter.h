#pragma once
// The interface the multi-rule evaluation (admission.h) drives: every keyed rate or quota rule,
// whatever its algorithm, can take a request's charge and give it back.
#include <cstdint>

#include "core/clock.h"
#include "limiter/decision.h"

namespace sluice::limiter {

// What take() did to one key, so refund() can undo exactly that. Opaque to callers.
struct ChargeReceipt {
  uint64_t key = 0;
  uint64_t before[2] = {0, 0};  // the key's state before the charge
  uint64_t after[2] = {0, 0};   // the state the charge left
  uint32_t cost = 0;
  bool charged = false;   // take() changed the state
  bool inserted = false;  // take() created the key
};

class RateLimiter {
 public:
  virtual ~RateLimiter() = default;

  // Decides on `cost` requests for `key` at `now` and charges the key when the verdict is allow
  // or delay (or on reject when countsRejected()). Fills `receipt` when it is not null.
  virtual RateDecision take(uint64_t key, Nanos now, uint32_t cost, ChargeReceipt* receipt) = 0;

  // Gives back what take() charged: restores the previous state exactly when nothing touched the
  // key since, otherwise subtracts the cost (other requests' charges stay). A key evicted in the
  // meantime has nothing to give back.
  virtual void refund(const ChargeReceipt& receipt, Nanos now) = 0;

  // The decision take() would make, without charging or inserting (RateLimit headers, Lua).
  virtual RateDecision peek(uint64_t key, Nanos now, uint32_t cost) const = 0;

  // Starts loading the key's state into the cache (see KeyTable::prefetch). Optional.
  virtual void prefetch(uint64_t /*key*/) const {}

  // Per rule: do rejected requests still count against the key (penalise IP/UA floods), or not
  // (never drain an item's bucket with calls that were turned away)?
  virtual bool countsRejected() const = 0;
};

}  // namespace sluice::limiter
