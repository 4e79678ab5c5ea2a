#pragma once
// The limit phase for one request across all of its route's rules: check all, then charge all.
//
// Rate rules are taken in order (take() decides and charges atomically per key, so concurrent
// requests cannot both squeeze through the last token). If a rule rejects, every earlier charge is
// refunded, except on rules that count rejected requests: a member's bucket is not drained because
// the IP rule said no, while an IP flood keeps paying for its rejected requests. Rules after the
// rejecting one are evaluated only if they count rejected requests (they must see every request).
// Concurrency rules are acquired only once every rate rule passed; a concurrency rejection
// refunds the rate charges the same way and returns the slots already taken.
//
// This is nginx's own order: limit_req looks every zone up without charging, charges them all
// only when none rejects, and stops at the first rejection.
#include <cstddef>
#include <cstdint>
#include <span>

#include "core/clock.h"
#include "limiter/concurrency.h"
#include "limiter/decision.h"
#include "limiter/rate_limiter.h"

namespace sluice::limiter {

constexpr size_t kMaxRateRules = 16;         // per request; the config loader enforces it
constexpr size_t kMaxConcurrencyRules = 8;

enum class RuleMode : uint8_t {
  kEnforce,  // a rejection rejects the request
  kShadow,   // evaluate, charge and report, never reject (try a rule on live traffic)
};

struct RateRuleCheck {
  RateLimiter* limiter = nullptr;
  uint64_t key = 0;  // hash64 of the rule's key for this request
  uint32_t cost = 1;
  RuleMode mode = RuleMode::kEnforce;
  // The longest delay this rule may impose (0: no bound). A request it would hold longer is a
  // rejection by this rule, uncharged like any other (retryAfter: when the delay would fit).
  Nanos maxDelay = 0;
};

struct ConcurrencyRuleCheck {
  ConcurrencyGate* gate = nullptr;
  uint64_t key = 0;
  RuleMode mode = RuleMode::kEnforce;
};

enum class RuleKind : uint8_t { kNone, kRate, kConcurrency };

// The outcome for the request. Holds the concurrency slots: keep it (or move the slots out) for
// the request's lifetime; destroying it releases them.
struct Admission {
  Verdict verdict = Verdict::kAllow;
  Nanos delay = 0;       // kDelay: the longest delay any enforcing rate rule asked for
  Nanos retryAfter = 0;  // kReject: from the rejecting rule (0 for concurrency rules)
  RuleKind rejectedBy = RuleKind::kNone;
  int rejectedIndex = -1;     // index into the rate or concurrency checks
  int tightestRateRule = -1;  // the enforcing rate rule with the least remaining (RateLimit headers)
  // Shadow rules that would have rejected: bit i for rate check i, bit 16 + j for concurrency j.
  uint32_t shadowRejects = 0;
  ConcurrencySlot slots[kMaxConcurrencyRules];
  size_t slotCount = 0;

  bool rejected() const { return verdict == Verdict::kReject; }
};

// `decisions`, when not empty, must have room for one per rate check; it receives each rule's
// decision (rules skipped after a rejection get a default-constructed one with charged=false).
Admission admit(std::span<const RateRuleCheck> rateChecks,
                std::span<const ConcurrencyRuleCheck> concurrencyChecks, Nanos now,
                std::span<RateDecision> decisions = {});
// The same, into an existing Admission (first reset: slots it still held are released). The
// proxy keeps the outcome in its per-request state; this spares it a temporary and a move of
// every slot.
void admitInto(Admission& out, std::span<const RateRuleCheck> rateChecks,
               std::span<const ConcurrencyRuleCheck> concurrencyChecks, Nanos now,
               std::span<RateDecision> decisions = {});

}  // namespace sluice::limiter
