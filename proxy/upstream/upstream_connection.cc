#include "proxy/upstream/upstream_connection.h"

#include <cstring>

#include "core/log.h"
#include "proxy/server/read_buffer.h"
#include "proxy/server/stream_writer.h"
#include "proxy/upstream/upstream_pool.h"
#include "proxy/server/write_batch.h"

namespace sluice {

namespace {
// Upstream response heads may be larger than what we accept from clients (big Set-Cookie
// bundles); the limit still bounds memory.
const HttpParserLimits kUpstreamLimits{8 * 1024, 64 * 1024, 200};
}  // namespace

UpstreamConnection::UpstreamConnection(std::shared_ptr<UpstreamPool> pool, size_t server_index,
                                       uv_loop_t* loop)
    : pool_(std::move(pool)),
      server_index_(server_index),
      loop_(loop),
      parser_(HTTP_RESPONSE, kUpstreamLimits, this) {
  uv_tcp_init(loop_, &tcp_);
  timer_.init(loop_, this, onTimer);
  tcp_.data = this;
  handles_open_ = 2;
}

void UpstreamConnection::connect(UpstreamHandler* handler) {
  handler_ = handler;
  state_ = State::kConnecting;
  reused_ = false;
  uv_tcp_nodelay(&tcp_, 1);
  auto& server = pool_->cluster().server(server_index_);
  connect_req_.data = this;
  int rc = uv_tcp_connect(&connect_req_, &tcp_,
                          reinterpret_cast<const sockaddr*>(&server.sockaddr), onConnect);
  if (rc != 0) {
    // Report on the next loop turn, never from inside acquire(): the handler is mid-setup.
    connect_error_ = rc;
    timer_.set(0);
    return;
  }
  timer_.set(toTimerMs(pool_->config().connect_timeout));
}

void UpstreamConnection::attach(UpstreamHandler* handler) {
  handler_ = handler;
  state_ = State::kActive;
  reused_ = true;
  request_complete_ = false;
  response_complete_ = false;
  interim_ = false;
  interim_paused_ = false;
  response_bytes_ = 0;
  keep_alive_ = true;
  timer_.clear();
  parser_.reset();
  if (!reading_) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), workerReadAlloc, onRead);
    reading_ = true;
  }
  read_paused_ = false;
}

void UpstreamConnection::setExpectations(bool head_request, Nanos send_timeout,
                                         Nanos read_timeout, uint64_t watermark) {
  head_request_ = head_request;
  send_timeout_ = send_timeout;
  read_timeout_ = read_timeout;
  watermark_ = watermark;
}

void UpstreamConnection::onConnect(uv_connect_t* req, int status) {
  auto* self = static_cast<UpstreamConnection*>(req->data);
  if (self->state_ == State::kClosing) return;
  if (status != 0) {
    self->fail(ErrorType::kConnectFailed, uv_strerror(status));
    return;
  }
  self->state_ = State::kActive;
  self->timer_.clear();
  uv_read_start(reinterpret_cast<uv_stream_t*>(&self->tcp_), workerReadAlloc, onRead);
  self->reading_ = true;
  if (self->handler_) self->handler_->onUpstreamConnected();
}

size_t UpstreamConnection::writeQueueSize() const {
  return uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&tcp_));
}

void UpstreamConnection::flush() {
  if (state_ != State::kActive || out_.empty()) return;
  // At the end of the loop turn, with the other connections' output (write_batch.h), unless it
  // is a request body being streamed.
  if (!deferFlush(out_.size(), loop_)) flushNow();
}

void UpstreamConnection::flushNow() {
  if (state_ != State::kActive || out_.empty()) return;
  int rc = writeStream(reinterpret_cast<uv_stream_t*>(&tcp_), &out_, this, onWrite);
  if (rc != 0) {
    fail(ErrorType::kConnectionReset, uv_strerror(rc));
    return;
  }
  armTimer();
}

void UpstreamConnection::requestComplete() {
  request_complete_ = true;
  armTimer();
}

void UpstreamConnection::armTimer() {
  if (state_ != State::kActive || tunnel_) return;
  if (writeQueueSize() > 0 && send_timeout_ > 0) {
    timer_.set(toTimerMs(send_timeout_));
  } else if (request_complete_ && !response_complete_ && read_timeout_ > 0) {
    timer_.set(toTimerMs(read_timeout_));
  } else {
    timer_.clear();
  }
}

void UpstreamConnection::onWrite(uv_write_t* req, int status) {
  auto* w = reinterpret_cast<WriteReq*>(req);
  auto* self = static_cast<UpstreamConnection*>(req->data);
  delete w;
  if (self->state_ == State::kClosing) return;
  if (status != 0) {
    self->fail(ErrorType::kConnectionReset, uv_strerror(status));
    return;
  }
  if (self->state_ != State::kActive) return;
  self->armTimer();
  if (self->handler_ && self->writeQueueSize() < self->watermark_ / 2)
    self->handler_->onUpstreamDrained();
}

void UpstreamConnection::onTimer(void* owner) {
  auto* self = static_cast<UpstreamConnection*>(owner);
  switch (self->state_) {
    case State::kConnecting:
      if (self->connect_error_ != 0)
        self->fail(ErrorType::kConnectFailed, uv_strerror(self->connect_error_));
      else
        self->fail(ErrorType::kConnectTimeout, "connect timed out");
      break;
    case State::kActive:
      if (self->writeQueueSize() > 0)
        self->fail(ErrorType::kSendTimeout, "send to upstream timed out");
      else
        self->fail(ErrorType::kReadTimeout, "upstream response timed out");
      break;
    case State::kIdle:
      self->close();  // keep-alive idle timeout
      break;
    case State::kClosing:
      break;
  }
}

void UpstreamConnection::onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<UpstreamConnection*>(s->data);
  if (nread == 0) return;
  if (self->state_ == State::kIdle) {
    // Anything on an idle connection (data, EOF, reset) means it is no longer usable.
    self->close();
    return;
  }
  if (self->state_ != State::kActive) return;
  if (nread < 0) {
    if (self->tunnel_) {
      auto* h = self->handler_;
      self->handler_ = nullptr;
      self->close();
      if (h) h->onUpstreamTunnelClosed();
      return;
    }
    // EOF may legitimately end a close-delimited body.
    if (nread == UV_EOF && self->parser_.headersDone() && self->parser_.inMessage() &&
        self->parser_.messageNeedsEof()) {
      self->parser_.finish();
      self->keep_alive_ = false;
      if (self->response_complete_ && self->handler_) {
        self->handler_->onUpstreamComplete();
        return;
      }
    }
    self->fail(ErrorType::kConnectionReset,
               nread == UV_EOF ? "upstream closed the connection" : uv_strerror(nread));
    return;
  }
  self->handleRead(buf->base, static_cast<size_t>(nread));
}

void UpstreamConnection::handleRead(const char* p, size_t n) {
  if (tunnel_) {
    if (handler_) handler_->onUpstreamTunnelData(p, n);
    return;
  }
  response_bytes_ += n;
  if (request_complete_ && read_timeout_ > 0 && writeQueueSize() == 0)
    timer_.set(toTimerMs(read_timeout_));
  auto r = parser_.execute(p, n);
  // An interim 1xx pauses too, so the final response behind it in the same read is parsed
  // (and screened for obs-fold) as a message of its own.
  while (r.status == HttpParser::Status::kPaused && interim_paused_ && handler_) {
    interim_paused_ = false;
    parser_.resume();
    p += r.consumed;
    n -= r.consumed;
    r = n > 0 ? parser_.execute(p, n) : HttpParser::Result{HttpParser::Status::kOk, 0};
  }
  switch (r.status) {
    case HttpParser::Status::kOk:
      break;
    case HttpParser::Status::kPaused: {
      // Paused at the end of a response; the handler hears of it only now, outside llhttp, so
      // it may hand this connection straight to the next request. Extra bytes after the
      // response mean the server is out of step with us: such a connection is never reused.
      auto* h = handler_;
      if (r.consumed < n) keep_alive_ = false;
      if (h) h->onUpstreamComplete();
      return;
    }
    case HttpParser::Status::kUpgrade:
      // 101: the handler switched us to tunnel mode in onHeaders; pass on what followed.
      if (tunnel_ && handler_ && r.consumed < n) handler_->onUpstreamTunnelData(p + r.consumed, n - r.consumed);
      break;
    case HttpParser::Status::kError:
      fail(ErrorType::kBadMessage, "invalid upstream response: " + parser_.errorReason());
      return;
  }
  if (handler_) handler_->onUpstreamReadDone();
}

int UpstreamConnection::onMessageBegin() {
  if (!handler_ || response_complete_) {
    // Bytes after a complete response on a connection we will reuse: the server is confused.
    return -1;
  }
  return 0;
}

int UpstreamConnection::onHeadersComplete() {
  auto& head = parser_.head();
  if (head.status >= 100 && head.status < 200 && head.status != 101) {
    interim_ = true;
    if (handler_) handler_->onUpstreamInterim(head);
    return 0;
  }
  interim_ = false;
  if (head.status == 101) {
    if (handler_) handler_->onUpstreamHeaders(head);
    return 2;  // no body: everything after is tunnel data
  }
  if (handler_) handler_->onUpstreamHeaders(head);
  if (state_ != State::kActive) return -1;
  return head_request_ ? 1 : 0;
}

int UpstreamConnection::onBody(const char* p, size_t n) {
  if (handler_) handler_->onUpstreamBody(p, n);
  return state_ == State::kActive ? 0 : -1;
}

int UpstreamConnection::onMessageComplete() {
  if (interim_) {
    interim_ = false;
    interim_paused_ = true;
    return HPE_PAUSED;
  }
  if (parser_.head().status == 101) return 0;
  response_complete_ = true;
  keep_alive_ = parser_.head().keep_alive;
  timer_.clear();
  return HPE_PAUSED;
}

void UpstreamConnection::pauseReading() {
  if (state_ == State::kActive && reading_ && !read_paused_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
    read_paused_ = true;
  }
}

void UpstreamConnection::resumeReading() {
  if (state_ == State::kActive && read_paused_) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), workerReadAlloc, onRead);
    read_paused_ = false;
  }
}

void UpstreamConnection::startTunnel() {
  tunnel_ = true;
  timer_.clear();
}

void UpstreamConnection::shutdownWrite() {
  if (state_ != State::kActive) return;
  flushNow();  // a shutdown queues behind written output only, not behind the batch
  if (state_ != State::kActive) return;
  auto* req = new uv_shutdown_t;
  req->data = this;
  if (uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&tcp_), onShutdown) != 0) delete req;
}

void UpstreamConnection::onShutdown(uv_shutdown_t* req, int) { delete req; }

void UpstreamConnection::becomeIdle() {
  handler_ = nullptr;
  state_ = State::kIdle;
  head_request_ = false;
  out_.clear();
  // Idle connections keep reading so a close by the server is noticed at once.
  if (read_paused_) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), workerReadAlloc, onRead);
    read_paused_ = false;
  }
  timer_.set(toTimerMs(pool_->config().keepalive_idle_timeout));
}

void UpstreamConnection::fail(ErrorType type, const std::string& detail) {
  auto* h = handler_;
  handler_ = nullptr;
  bool before_response = response_bytes_ == 0;
  close();
  if (!h) return;
  Error e;
  e.source = ErrorSource::kUpstream;
  e.type = type;
  e.detail = detail;
  // Safe to send elsewhere when the server cannot have acted on it: it never connected, or a
  // reused keep-alive connection died before answering (the server closed it as we sent).
  e.retryable = type == ErrorType::kConnectFailed || type == ErrorType::kConnectTimeout ||
                (reused_ && before_response && type == ErrorType::kConnectionReset);
  h->onUpstreamError(e);
}

void UpstreamConnection::abort() {
  handler_ = nullptr;
  close();
}

void UpstreamConnection::close() {
  if (state_ == State::kClosing) return;
  cancelFlush();
  state_ = State::kClosing;
  handler_ = nullptr;
  timer_.stop();
  uv_close(timer_.handle(), [](uv_handle_t* h) {
    onClose(static_cast<UpstreamConnection*>(LazyTimer::ownerOf(h))->tcpHandle());
  });
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), onClose);
}

void UpstreamConnection::onClose(uv_handle_t* h) {
  auto* self = static_cast<UpstreamConnection*>(h->data);
  if (--self->handles_open_ == 0) {
    self->pool_->onConnectionClosed(self);
    delete self;
  }
}

}  // namespace sluice
