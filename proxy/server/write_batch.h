#pragma once
// WriteBatch: socket writes deferred to the end of the event-loop turn, for upstream requests and
// small client responses.
//
// Why: a write() to a peer that sleeps in epoll wakes it, and a wake-up on another core is an
// inter-processor interrupt, which a VM makes expensive. perf on bench/risk-e2e put 9 % of the
// proxy's CPU in waking the storefront (write -> tcp_v4_rcv -> sock_def_readable), once per
// request: between two requests' writes the storefront had answered and gone back to sleep.
// Flushing every connection's output after the turn's ready events are all handled wakes each
// peer once per turn, and it then finds the whole batch ready. The client side (wrk, a browser's
// network thread) sleeps the same way: batching responses took 2.5 % off the CPU per request of
// bench/risk-e2e's plain proxy and 4 % off its risk proxy (three alternating runs each), where a
// slower proxy leaves its peers asleep more often.
//
// Order of a libuv turn: timers, pending, idle, prepare, poll (I/O callbacks), check, closing.
// The check handle flushes what the I/O callbacks queued; the prepare handle flushes, before
// the loop blocks in poll, what timers, write callbacks and closing callbacks queued. So output
// is never held across a blocking poll, and with one ready event per turn (light load) a write
// goes out as soon as that event's handling ends, as before.
//
// One per worker loop, owned by the Worker, reached through forThisThread() from the worker's
// own thread; a thread without one (tests driving a loop by hand) writes at once.
#include <uv.h>

#include <cstddef>
#include <vector>

namespace sluice {

class WriteBatch;

// A connection whose flush() goes through the batch: flush() { if (!deferFlush(...)) flushNow(); }.
// It must call cancelFlush() before its memory goes away (when it starts closing), and check in
// flushNow() that it still may write.
class BatchedWriter {
 public:
  virtual ~BatchedWriter() = default;

 protected:
  friend class WriteBatch;
  // Writes the queued output now. May close this or another writer of the batch.
  virtual void flushNow() = 0;
  // Leaves `bytes` of output on `loop` for the end of the turn: true when this thread's batch
  // took it, false when the caller writes at once (a streamed body above kMaxDeferredBytes, or
  // no batch on this thread).
  bool deferFlush(size_t bytes, uv_loop_t* loop);
  // Drops a flush still waiting in this thread's batch.
  void cancelFlush();
  bool flush_deferred_ = false;  // queued in this thread's WriteBatch
};

class WriteBatch {
 public:
  // Output above this is a streamed body: its writer writes it at once, so the write queue stays
  // the measure of backpressure (a deferred 64 KiB read per read callback let an upload buffer up
  // to 2 MB a turn, and an ASan build's RSS grow by 100 MB).
  static constexpr size_t kMaxDeferredBytes = 16 * 1024;

  explicit WriteBatch(uv_loop_t* loop);
  ~WriteBatch();
  WriteBatch(const WriteBatch&) = delete;
  WriteBatch& operator=(const WriteBatch&) = delete;

  // The batch of the calling thread's loop, or null.
  static WriteBatch* forThisThread();
  // Makes this the calling thread's batch (the worker's thread, before its loop runs).
  void bindToThisThread();

  // Queues w's flush for the end of the turn (once however often it is called). False when the
  // batch is closed or belongs to another loop: the caller writes at once.
  bool defer(BatchedWriter* w, uv_loop_t* loop);
  // Forgets w (closing): its flush is not run by the batch.
  void cancel(BatchedWriter* w);
  // Flushes what is pending and closes the handles (worker drain); defer() refuses afterwards.
  void close();

 private:
  static void onCheck(uv_check_t* h);
  static void onPrepare(uv_prepare_t* h);
  void run();

  uv_loop_t* loop_;
  uv_check_t check_;
  uv_prepare_t prepare_;
  bool closed_ = false;
  std::vector<BatchedWriter*> pending_;
  std::vector<BatchedWriter*> running_;  // swapped with pending_: flushes may defer again
};

}  // namespace sluice
