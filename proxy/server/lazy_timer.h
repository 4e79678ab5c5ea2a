#pragma once
// A one-shot libuv timer re-armed lazily. Request phases move a connection's deadline several
// times per request (header -> body -> idle ...); moving it later costs only a field write (the
// timer fires early, sees the later deadline and sleeps again), and only an earlier deadline
// touches libuv's timer heap. nginx's event timers use the same trick.
#include <uv.h>

#include <cstdint>

namespace sluice {

class LazyTimer {
 public:
  using Callback = void (*)(void* owner);

  void init(uv_loop_t* loop, void* owner, Callback cb) {
    uv_timer_init(loop, &timer_);
    timer_.data = this;
    owner_ = owner;
    cb_ = cb;
  }
  // Fires `cb` once `timeout_ms` from now (loop time), unless set again or cleared first.
  void set(uint64_t timeout_ms) {
    uint64_t now = uv_now(timer_.loop);
    deadline_ = now + timeout_ms;
    if (armed_ == 0 || armed_ > deadline_) {
      uv_timer_start(&timer_, onFire, timeout_ms, 0);
      armed_ = deadline_;
    }
  }
  void clear() { deadline_ = 0; }
  bool pending() const { return deadline_ != 0; }
  uv_handle_t* handle() { return reinterpret_cast<uv_handle_t*>(&timer_); }
  // For close callbacks, whose handle's data is the LazyTimer, not its owner.
  static void* ownerOf(uv_handle_t* h) { return static_cast<LazyTimer*>(h->data)->owner_; }
  void stop() {
    deadline_ = 0;
    armed_ = 0;
    uv_timer_stop(&timer_);
  }

 private:
  static void onFire(uv_timer_t* t) {
    auto* self = static_cast<LazyTimer*>(t->data);
    self->armed_ = 0;
    if (self->deadline_ == 0) return;
    uint64_t now = uv_now(t->loop);
    if (now < self->deadline_) {
      uv_timer_start(t, onFire, self->deadline_ - now, 0);
      self->armed_ = self->deadline_;
      return;
    }
    self->deadline_ = 0;
    self->cb_(self->owner_);
  }

  uv_timer_t timer_;
  void* owner_ = nullptr;
  Callback cb_ = nullptr;
  uint64_t deadline_ = 0;  // loop ms; 0 = none
  uint64_t armed_ = 0;     // when the uv timer will fire; 0 = not armed
};

inline uint64_t toTimerMs(int64_t nanos) { return nanos <= 0 ? 0 : static_cast<uint64_t>(nanos / 1000000) + 1; }

}  // namespace sluice
