// The storefront's I/O: one Worker (uv_loop + SO_REUSEPORT listener) per thread, and one
// Connection per accepted socket that parses requests with llhttp and answers them in order.
#pragma once

#include <llhttp.h>
#include <openssl/evp.h>
#include <uv.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "demo/storefront/site.h"

namespace sluice::demo {

// State every worker reads; the atomics are the only things written after start-up.
struct Shared {
  const Site* site = nullptr;
  const EVP_MD* sha256 = nullptr;  // fetched once: implicit fetches take a global lock
  const EVP_MD* sha1 = nullptr;
  uint64_t idle_timeout_ms = 75'000;  // 0 = never
  bool quiet = false;
  std::atomic<uint64_t> requests{0};
  std::atomic<bool> healthy{true};
};

class Worker;
struct StreamScratch;
struct ParserCallbacks;

class Connection {
 public:
  explicit Connection(Worker* worker);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Initialises the handles and accepts from `server`; on failure the connection closes itself.
  void start(uv_stream_t* server);
  // Idempotent; the worker gets the object back once both handles have closed.
  void close();

  Connection* prev = nullptr;  // the worker's list of live connections
  Connection* next = nullptr;

 private:
  // What the connection is doing; it reads only in kReading, kTunnel and kLingering.
  enum class State : uint8_t {
    kReading,    // parsing requests and answering them in order
    kWaiting,    // a delayed answer (/api/slow) is on the timer; parser paused
    kStreaming,  // /__demo/bytes body going out under backpressure; parser paused
    kTunnel,     // after 101: every byte read is echoed back
    kDraining,   // last response queued; shut down once it has been written
    kLingering,  // FIN sent; discard input until EOF so the peer never sees a reset
    kClosing,
  };
  enum class TimerUse : uint8_t { kNone, kIdle, kDelay, kLinger };

  struct HeaderSpan {
    uint32_t name_off, name_len, value_off, value_len;
  };

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }
  std::string_view header_name(size_t i) const {
    return {hbuf_.data() + headers_[i].name_off, headers_[i].name_len};
  }
  std::string_view header_value(size_t i) const {
    return {hbuf_.data() + headers_[i].value_off, headers_[i].value_len};
  }
  bool find_header(std::string_view name, std::string_view* value) const;
  bool any_header_has_token(std::string_view name, std::string_view token) const;
  bool find_cookie(std::string_view name, std::string_view* value) const;

  // Input.
  void feed(const char* data, size_t len, bool from_pending);
  void after_parse();
  void on_read(ssize_t nread, const uv_buf_t* buf);
  void on_peer_eof();
  void update_reading();
  void reject(llhttp_errno_t err);

  // llhttp callbacks.
  int on_message_begin();
  int on_url(const char* at, size_t len);
  int on_header_field(const char* at, size_t len);
  int on_header_field_complete();
  int on_header_value(const char* at, size_t len);
  int on_header_value_complete();
  int on_headers_complete();
  int on_body(const char* at, size_t len);
  int on_message_complete();

  // Answers.
  void respond();
  void respond_json(int status, std::string_view body);
  void respond_error(int status, std::string_view message);
  void respond_echo();
  void respond_bytes();
  void respond_status();
  void respond_websocket();
  void respond_delayed();
  void start_delay(uint64_t ms);
  void finish_async();

  // Output.
  size_t queued_bytes() const;
  void flush();
  void on_write(int status);
  void on_drained();
  void pump_stream();
  void on_stream_write(int status);
  void begin_shutdown();
  void on_shutdown(int status);

  // Timer.
  void arm_idle();
  void on_timer();
  void on_handle_closed();

  Worker* worker_;
  uv_tcp_t tcp_;
  uv_timer_t timer_;
  uv_write_t write_req_;
  uv_write_t stream_req_;
  uv_shutdown_t shutdown_req_;
  llhttp_t parser_;
  EVP_MD_CTX* sha_ = nullptr;  // created on the first echo, reused after

  State state_ = State::kReading;
  TimerUse timer_use_ = TimerUse::kNone;
  int open_handles_ = 0;
  bool reading_ = false;
  bool writing_ = false;
  bool stream_writing_ = false;
  bool peer_eof_ = false;
  bool close_after_ = false;  // the current async answer ends the connection
  uint64_t last_active_ = 0;

  // Output is gathered in out_ while a batch of pipelined requests is parsed and written with
  // one syscall; inflight_ owns the bytes of the single write libuv may still be working on.
  std::string out_;
  std::string inflight_;

  // Input that arrived behind a request answered asynchronously, parsed when that answer ends.
  std::string pending_in_;
  size_t pending_off_ = 0;

  // The request being parsed. Buffers keep their capacity across requests.
  std::string url_;
  std::string hbuf_;
  std::vector<HeaderSpan> headers_;
  size_t trailers_begin_ = 0;  // headers_[trailers_begin_..] arrived after a chunked body
  bool field_open_ = false;
  bool head_only_ = false;
  uint64_t body_bytes_ = 0;
  int reject_status_ = 0;  // set by a callback that refuses the request (414, 431)
  Route route_;
  ConnHeader conn_ = ConnHeader::kNone;

  // Delayed answers and streams.
  RouteId delayed_route_ = RouteId::kSlow;
  uint64_t delay_ms_ = 0;
  uint64_t stream_left_ = 0;
  uint64_t stream_pos_ = 0;
  uint32_t stream_chunk_ = 0;
  bool stream_chunked_ = false;
  std::unique_ptr<StreamScratch> scratch_;

  friend class Worker;
  friend struct ParserCallbacks;
};

class Worker {
 public:
  Worker(int index, Shared* shared);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Adopts a bound, listening socket; returns a libuv error code.
  int listen(int fd);
  void run();
  // Thread-safe: closes the listener and every connection, which lets run() return.
  void request_stop();

  Shared& shared() { return *shared_; }
  int index() const { return index_; }
  uv_loop_t* loop() { return &loop_; }
  char* read_buffer() { return read_buf_.get(); }
  std::string& body_scratch() { return body_scratch_; }
  uint64_t next_order() { return ++orders_; }

  void release(Connection* c);

  static constexpr size_t kReadBufferSize = 64 * 1024;

 private:
  void on_connection(int status);
  void on_stop();

  int index_;
  Shared* shared_;
  uv_loop_t loop_;
  uv_tcp_t listener_;
  uv_async_t stop_;
  // One read buffer per worker: reads are handled to completion before the next, and a
  // connection copies out only what it must keep (input behind a paused request).
  std::unique_ptr<char[]> read_buf_;
  std::string body_scratch_;
  uint64_t orders_ = 0;
  Connection* live_ = nullptr;
  std::vector<Connection*> spare_;  // closed connections kept for reuse, buffers and all
};

}  // namespace sluice::demo
