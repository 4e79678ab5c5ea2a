#pragma once
// One TCP connection to an upstream server. It carries one request at a time; between requests
// it sits idle in its worker's UpstreamPool. Events go to an UpstreamHandler (the client side of
// the exchange), which never sees libuv.
#include <uv.h>

#include <memory>
#include <string>

#include "core/clock.h"
#include "core/error.h"
#include "proxy/http/http_parser.h"
#include "proxy/server/lazy_timer.h"
#include "proxy/server/write_batch.h"

namespace sluice {

class UpstreamPool;

class UpstreamHandler {
 public:
  virtual ~UpstreamHandler() = default;
  virtual void onUpstreamConnected() = 0;
  // Interim 1xx (other than 101): forwarded to the client or dropped by the handler.
  virtual void onUpstreamInterim(const HttpMessageHead& head) = 0;
  virtual void onUpstreamHeaders(HttpMessageHead& head) = 0;
  virtual void onUpstreamBody(const char* p, size_t n) = 0;
  virtual void onUpstreamComplete() = 0;
  // After a 101: raw bytes from the upstream.
  virtual void onUpstreamTunnelData(const char* p, size_t n) = 0;
  virtual void onUpstreamTunnelClosed() = 0;
  virtual void onUpstreamError(const Error& err) = 0;
  // The upstream's write queue drained below the watermark: client reading may resume.
  virtual void onUpstreamDrained() = 0;
  // End of one read's worth of events: the moment to flush coalesced client output.
  virtual void onUpstreamReadDone() = 0;
};

class UpstreamConnection : private HttpParserDelegate, private BatchedWriter {
 public:
  enum class State { kConnecting, kActive, kIdle, kClosing };

  UpstreamConnection(std::shared_ptr<UpstreamPool> pool, size_t server_index, uv_loop_t* loop);
  void connect(UpstreamHandler* handler);
  // Takes an idle connection for a new request.
  void attach(UpstreamHandler* handler);
  // Per-request settings, set before sending.
  void setExpectations(bool head_request, Nanos send_timeout, Nanos read_timeout,
                       uint64_t watermark);

  // Output is coalesced; flush() writes it at the end of the loop turn (WriteBatch), or at once
  // when it is more than WriteBatch::kMaxDeferredBytes (a streamed body) or on a thread without a
  // batch. A failed write closes the connection and reports to the handler.
  std::string& out() { return out_; }
  void flush();
  // The whole request has been handed over (arms the read timeout once written).
  void requestComplete();
  size_t writeQueueSize() const;

  void pauseReading();
  void resumeReading();
  // Detach and close, e.g. the client went away mid-exchange.
  void abort();
  // Switch to tunnel mode after a 101 (bytes in `rest` already arrived after the head).
  void startTunnel();
  void shutdownWrite();

  State state() const { return state_; }
  size_t serverIndex() const { return server_index_; }
  bool reused() const { return reused_; }
  bool responseStarted() const { return response_bytes_ > 0; }
  // After onUpstreamComplete: may this connection carry another request?
  // Output still waiting for the end of the turn counts as unwritten: an upstream that answered
  // early (a 413 before the body) must not read the rest of this body as the next request.
  bool reusable() const {
    return keep_alive_ && !tunnel_ && out_.empty() && writeQueueSize() == 0 && request_complete_;
  }
  uv_loop_t* loop() const { return loop_; }

 private:
  friend class UpstreamPool;
  void flushNow() override;
  static void onConnect(uv_connect_t* req, int status);
  static void onAlloc(uv_handle_t* h, size_t suggested, uv_buf_t* buf);
  static void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf);
  static void onWrite(uv_write_t* req, int status);
  static void onTimer(void* self);
  static void onClose(uv_handle_t* h);
  uv_handle_t* tcpHandle() { return reinterpret_cast<uv_handle_t*>(&tcp_); }
  static void onShutdown(uv_shutdown_t* req, int status);

  int onMessageBegin() override;
  int onHeadersComplete() override;
  int onBody(const char* p, size_t n) override;
  int onMessageComplete() override;

  void handleRead(const char* p, size_t n);
  void fail(ErrorType type, const std::string& detail);
  void close();
  void armTimer();
  void becomeIdle();

  std::shared_ptr<UpstreamPool> pool_;  // keeps a retired pool alive until we close
  size_t server_index_;
  uv_loop_t* loop_;
  uv_tcp_t tcp_;
  LazyTimer timer_;
  uv_connect_t connect_req_;
  HttpParser parser_;
  UpstreamHandler* handler_ = nullptr;
  State state_ = State::kConnecting;
  std::string out_;
  bool reused_ = false;
  bool head_request_ = false;
  bool request_complete_ = false;
  bool interim_ = false;
  bool interim_paused_ = false;
  bool response_complete_ = false;
  bool tunnel_ = false;
  bool keep_alive_ = true;
  bool reading_ = false;
  bool read_paused_ = false;
  uint64_t response_bytes_ = 0;
  uint64_t watermark_ = 64 * 1024;
  Nanos send_timeout_ = 0;
  Nanos read_timeout_ = 0;
  int handles_open_ = 0;
  int connect_error_ = 0;
};

}  // namespace sluice
