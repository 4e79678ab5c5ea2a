#pragma once
// The value every rate/quota check returns. It carries enough to answer the client (429 with
// Retry-After, a delay, RateLimit headers) without the caller knowing which algorithm decided.
#include <cstdint>

#include "core/clock.h"

namespace sluice::limiter {

enum class Verdict : uint8_t {
  kAllow,   // pass now
  kDelay,   // pass after `delay` (nginx limit_req without nodelay); already charged
  kReject,  // over the limit; not charged unless the rule counts rejected requests
};

const char* verdictName(Verdict v);

struct RateDecision {
  Verdict verdict = Verdict::kAllow;
  // kDelay: how long to hold the request before forwarding it.
  Nanos delay = 0;
  // kReject: the earliest moment (relative to now) at which the same request would pass.
  Nanos retryAfter = 0;
  // Time until the quota is fully restored (RateLimit "reset").
  Nanos reset = 0;
  // Quota size and what is left of it right now (RateLimit "limit"/"remaining").
  int64_t limit = 0;
  int64_t remaining = 0;
  // True when this call changed the key's state (accepted, or rejected but counted).
  bool charged = false;

  bool rejected() const { return verdict == Verdict::kReject; }
};

}  // namespace sluice::limiter
