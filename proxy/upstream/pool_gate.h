#pragma once
// Admission to an upstream pool, process-wide (all workers): a fixed cap on in-flight requests
// (`max_active`), an adaptive latency-driven backstop (`adaptive_concurrency`), and the
// saturation the application tier reports about itself (`saturation`), which sheds routes by
// priority. Owned by the UpstreamCluster and handed over to the next generation's cluster of
// the same name, so in-flight counts stay exact across a reload.
#include <atomic>
#include <memory>
#include <string_view>

#include "core/clock.h"
#include "limiter/adaptive_concurrency.h"
#include "limiter/concurrency.h"
#include "proxy/config/config.h"

namespace sluice {

class PoolGate {
 public:
  // Reuses `previous`'s limiters (and saturation reading) where the numbers allow.
  PoolGate(const UpstreamConfig& config, const PoolGate* previous, Nanos now);

  enum class Refusal { kNone, kMaxActive, kAdaptive, kSaturated };
  struct Admission {
    Refusal refusal = Refusal::kNone;
    limiter::ConcurrencySlot fixed;
    limiter::ConcurrencySlot adaptive;
  };
  // Takes the pool's slots for one request of a route with `priority`.
  Admission admit(RoutePriority priority, Nanos now);

  // A completed request's upstream latency, for the adaptive limit.
  void recordLatency(Nanos latency, Nanos now) {
    if (adaptive_) adaptive_->recordLatency(latency, now);
  }
  // The saturation header's value from a response or a health probe ("137" busy threads).
  void reportSaturation(std::string_view value, Nanos now);
  // Load in [0, inf) from the last report, or -1 when none is fresh.
  double saturation(Nanos now) const;
  const SaturationConfig& saturationConfig() const { return saturation_; }

  uint32_t inFlight() const { return fixed_ ? fixed_->inFlight() : 0; }
  const limiter::ConcurrencyLimiter* fixed() const { return fixed_.get(); }
  const limiter::GradientConcurrencyLimit* adaptive() const { return adaptive_.get(); }

 private:
  std::shared_ptr<limiter::ConcurrencyLimiter> fixed_;
  std::shared_ptr<limiter::GradientConcurrencyLimit> adaptive_;
  AdaptiveConcurrencyConfig adaptive_config_;
  SaturationConfig saturation_;
  // Shared with the previous/next generation's gate: a reading stays valid across a reload.
  struct Reading {
    std::atomic<int64_t> load_ppm{-1};  // load * 1e6
    std::atomic<Nanos> at{0};
  };
  std::shared_ptr<Reading> reading_;
};

const char* poolRefusalName(PoolGate::Refusal r);

}  // namespace sluice
