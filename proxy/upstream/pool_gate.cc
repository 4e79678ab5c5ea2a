#include "proxy/upstream/pool_gate.h"

#include <charconv>

namespace sluice {

namespace {

bool sameAdaptive(const AdaptiveConcurrencyConfig& a, const AdaptiveConcurrencyConfig& b) {
  return a.enabled == b.enabled && a.floor == b.floor && a.ceiling == b.ceiling &&
         a.sample_window == b.sample_window && a.percentile == b.percentile &&
         a.min_rtt_interval == b.min_rtt_interval;
}

}  // namespace

const char* poolRefusalName(PoolGate::Refusal r) {
  switch (r) {
    case PoolGate::Refusal::kNone: return "none";
    case PoolGate::Refusal::kMaxActive: return "max_active";
    case PoolGate::Refusal::kAdaptive: return "adaptive_concurrency";
    case PoolGate::Refusal::kSaturated: return "saturated";
  }
  return "?";
}

PoolGate::PoolGate(const UpstreamConfig& config, const PoolGate* previous, Nanos now)
    : adaptive_config_(config.adaptive), saturation_(config.saturation) {
  if (config.max_active > 0) {
    if (previous && previous->fixed_) {
      fixed_ = previous->fixed_;  // the same counter: in-flight requests stay counted
      fixed_->setLimit(config.max_active);
    } else {
      fixed_ = std::make_shared<limiter::ConcurrencyLimiter>(config.max_active);
    }
  }
  if (config.adaptive.enabled) {
    if (previous && previous->adaptive_ && sameAdaptive(previous->adaptive_config_, config.adaptive)) {
      adaptive_ = previous->adaptive_;
    } else {
      limiter::GradientParams p;
      p.floor = config.adaptive.floor;
      p.ceiling = config.adaptive.ceiling;
      p.initialLimit = config.adaptive.floor;
      p.sampleWindow = config.adaptive.sample_window;
      p.percentile = config.adaptive.percentile;
      p.minRttInterval = config.adaptive.min_rtt_interval;
      adaptive_ = std::make_shared<limiter::GradientConcurrencyLimit>(p, now);
    }
  }
  reading_ = previous ? previous->reading_ : std::make_shared<Reading>();
}

PoolGate::Admission PoolGate::admit(RoutePriority priority, Nanos now) {
  Admission a;
  if (!saturation_.header.empty() && priority != RoutePriority::kCritical) {
    double load = saturation(now);
    double shed_at = priority == RoutePriority::kLow      ? saturation_.shed_low
                     : priority == RoutePriority::kNormal ? saturation_.shed_normal
                                                          : 1.0;
    if (load >= shed_at) {
      a.refusal = Refusal::kSaturated;
      return a;
    }
  }
  if (fixed_) {
    auto r = fixed_->tryAcquire(0, now);
    if (!r.acquired()) {
      a.refusal = Refusal::kMaxActive;
      return a;
    }
    a.fixed = std::move(r.slot);
  }
  if (adaptive_) {
    auto r = adaptive_->tryAcquire(0, now);
    if (!r.acquired()) {
      a.fixed.release();
      a.refusal = Refusal::kAdaptive;
      return a;
    }
    a.adaptive = std::move(r.slot);
  }
  return a;
}

void PoolGate::reportSaturation(std::string_view value, Nanos now) {
  if (saturation_.header.empty() || saturation_.capacity <= 0) return;
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  double busy = 0;
  auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), busy);
  if (ec != std::errc() || !(busy >= 0 && busy <= 1e12)) return;  // garbage (or NaN) is no report
  reading_->load_ppm.store(static_cast<int64_t>(busy / saturation_.capacity * 1e6), std::memory_order_relaxed);
  reading_->at.store(now, std::memory_order_relaxed);
}

double PoolGate::saturation(Nanos now) const {
  int64_t ppm = reading_->load_ppm.load(std::memory_order_relaxed);
  if (ppm < 0 || now - reading_->at.load(std::memory_order_relaxed) > saturation_.hold) return -1;
  return static_cast<double>(ppm) / 1e6;
}

}  // namespace sluice
