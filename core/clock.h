#pragma once
// One monotonic time source for the whole process. Limiter and risk code take a `Clock&`
// (or a plain timestamp) so tests can inject time; the proxy passes the steady clock.
#include <chrono>
#include <cstdint>

namespace sluice {

using Nanos = int64_t;

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds since an arbitrary epoch; never goes backwards.
  virtual Nanos now() const = 0;
};

class SteadyClock final : public Clock {
 public:
  Nanos now() const override { return monotonicNanos(); }
  static Nanos monotonicNanos() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

// A clock tests move by hand.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(Nanos start = 0) : now_(start) {}
  Nanos now() const override { return now_; }
  void advance(Nanos d) { now_ += d; }
  void set(Nanos t) { now_ = t; }

 private:
  Nanos now_;
};

inline int64_t wallMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

constexpr Nanos kMillis = 1000000;
constexpr Nanos kSeconds = 1000 * kMillis;

}  // namespace sluice
