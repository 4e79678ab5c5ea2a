#include "limiter/admission.h"

#include <algorithm>
#include <new>

#include "core/uninit_array.h"

namespace sluice::limiter {

const char* verdictName(Verdict v) {
  switch (v) {
    case Verdict::kAllow:
      return "allow";
    case Verdict::kDelay:
      return "delay";
    case Verdict::kReject:
      return "reject";
  }
  return "?";
}

Admission admit(std::span<const RateRuleCheck> rateChecks,
                std::span<const ConcurrencyRuleCheck> concurrencyChecks, Nanos now,
                std::span<RateDecision> decisions) {
  Admission out;
  admitInto(out, rateChecks, concurrencyChecks, now, decisions);
  return out;
}

void admitInto(Admission& out, std::span<const RateRuleCheck> rateChecks,
               std::span<const ConcurrencyRuleCheck> concurrencyChecks, Nanos now,
               std::span<RateDecision> decisions) {
  const size_t rateCount = std::min(rateChecks.size(), kMaxRateRules);
  const size_t concurrencyCount = std::min(concurrencyChecks.size(), kMaxConcurrencyRules);
  // Issue every rule's cache miss at once, first: N rules then cost about one miss, not N, and
  // the rest of the setup (releasing slots still held) overlaps it. Concurrency rules too: a
  // keyed one (active requests per member) is checked last, after all rate rules.
  for (size_t i = 0; i < rateCount; ++i) rateChecks[i].limiter->prefetch(rateChecks[i].key);
  for (size_t j = 0; j < concurrencyCount; ++j) {
    concurrencyChecks[j].gate->prefetch(concurrencyChecks[j].key);
  }

  for (size_t j = 0; j < out.slotCount; ++j) out.slots[j].release();
  out.slotCount = 0;
  out.verdict = Verdict::kAllow;
  out.delay = 0;
  out.retryAfter = 0;
  out.rejectedBy = RuleKind::kNone;
  out.rejectedIndex = -1;
  out.tightestRateRule = -1;
  out.shadowRejects = 0;
  const bool report = decisions.size() >= rateCount;
  // Only `charged` is read unless take() set it, and take() fills the rest when it charges.
  UninitArray<ChargeReceipt, kMaxRateRules> receipts;
  int64_t tightestRemaining = INT64_MAX;

  RateDecision scratch;
  for (size_t i = 0; i < rateCount; ++i) {
    const RateRuleCheck& check = rateChecks[i];
    RateLimiter* limiter = check.limiter;
    receipts[i].charged = false;  // not every limiter fills the receipt when it does not charge
    if (out.rejected() && !limiter->countsRejected()) {  // never charged, never refunded
      if (report) decisions[i] = RateDecision();
      continue;
    }
    // take() fills the receipt and builds its decision in place, in the caller's slot: a copy
    // of a decision just written (in pieces) stalls on store forwarding, several times a request.
    RateDecision& d = report ? decisions[i] : scratch;
    new (&d) RateDecision(limiter->take(check.key, now, check.cost, &receipts[i]));
    if (d.verdict == Verdict::kDelay && check.maxDelay > 0 && d.delay > check.maxDelay) {
      // Charged by take(); refunded below with the rest unless the rule counts rejections.
      d.verdict = Verdict::kReject;
      d.retryAfter = d.delay - check.maxDelay;
      d.delay = 0;
    }
    const bool enforce = check.mode == RuleMode::kEnforce;
    if (d.rejected()) {
      if (!enforce) {
        out.shadowRejects |= uint32_t{1} << i;
      } else if (!out.rejected()) {
        out.verdict = Verdict::kReject;
        out.rejectedBy = RuleKind::kRate;
        out.rejectedIndex = static_cast<int>(i);
        out.retryAfter = d.retryAfter;
      }
      continue;
    }
    if (enforce && !out.rejected()) {
      if (d.verdict == Verdict::kDelay && d.delay > out.delay) {
        out.verdict = Verdict::kDelay;
        out.delay = d.delay;
      }
      if (d.remaining < tightestRemaining) {
        tightestRemaining = d.remaining;
        out.tightestRateRule = static_cast<int>(i);
      }
    }
  }

  if (!out.rejected()) {
    for (size_t j = 0; j < concurrencyCount; ++j) {
      const ConcurrencyRuleCheck& check = concurrencyChecks[j];
      AcquireResult acquired = check.gate->tryAcquire(check.key, now);
      if (acquired.acquired()) {
        out.slots[out.slotCount++] = std::move(acquired.slot);
        continue;
      }
      if (check.mode == RuleMode::kShadow) {
        out.shadowRejects |= uint32_t{1} << (16 + j);
        continue;
      }
      out.verdict = Verdict::kReject;
      out.rejectedBy = RuleKind::kConcurrency;
      out.rejectedIndex = static_cast<int>(j);
      break;
    }
  }

  if (out.rejected()) {
    out.delay = 0;
    out.tightestRateRule = -1;
    for (size_t j = 0; j < out.slotCount; ++j) out.slots[j].release();
    out.slotCount = 0;
    for (size_t i = 0; i < rateCount; ++i) {
      if (receipts[i].charged && !rateChecks[i].limiter->countsRejected()) {
        rateChecks[i].limiter->refund(receipts[i], now);
      }
    }
  }
}

}  // namespace sluice::limiter
