#include "demo/storefront/server.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>

namespace sluice::demo {
namespace {

constexpr size_t kMaxTarget = 8 * 1024;
constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxHeaders = 128;
// Above this much unwritten output the connection stops reading until the peer catches up,
// so a client pipelining without reading cannot make the server buffer without bound.
constexpr size_t kHighWater = 1024 * 1024;
constexpr uint64_t kLingerMs = 2000;
constexpr uint64_t kMaxSlowMs = 60'000;
constexpr uint64_t kMaxBytes = uint64_t{1} << 40;
constexpr uint64_t kDefaultChunk = 16 * 1024;
constexpr uint64_t kMaxChunk = 1024 * 1024;

// /__demo/bytes serves slices of one static buffer (byte i = 'a' + i % 26), so a download
// costs no copies: a slice starting at pattern offset p begins at kPattern + p % 26.
constexpr size_t kPatternSpan = 256 * 1024;
constexpr size_t kStreamBatch = 256 * 1024;  // bytes per write, the most libuv ever queues
constexpr size_t kMaxStreamBufs = 512;
constexpr size_t kMaxStreamChunks = 128;

const char* pattern() {
  static const std::array<char, kPatternSpan + 26> buf = [] {
    std::array<char, kPatternSpan + 26> b{};
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<char>('a' + i % 26);
    return b;
  }();
  return buf.data();
}

constexpr char kCrlf[] = "\r\n";
constexpr std::string_view kWebSocketGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

Connection* from_parser(llhttp_t* p) { return static_cast<Connection*>(p->data); }

}  // namespace

// Chunk-size lines and iovecs for one stream write; allocated on a connection's first
// download and reused after, so a 200 MB download allocates nothing per write.
struct StreamScratch {
  std::array<uv_buf_t, kMaxStreamBufs> bufs;
  std::array<std::array<char, 24>, kMaxStreamChunks> heads;
};

// ---------------------------------------------------------------------------------------
// Parser glue

// The llhttp callbacks only record what they see; they never write or resume, because
// re-entering llhttp_execute from inside a callback is not allowed.
struct ParserCallbacks {
  static int message_begin(llhttp_t* p) { return from_parser(p)->on_message_begin(); }
  static int url(llhttp_t* p, const char* at, size_t len) {
    return from_parser(p)->on_url(at, len);
  }
  static int header_field(llhttp_t* p, const char* at, size_t len) {
    return from_parser(p)->on_header_field(at, len);
  }
  static int header_field_complete(llhttp_t* p) {
    return from_parser(p)->on_header_field_complete();
  }
  static int header_value(llhttp_t* p, const char* at, size_t len) {
    return from_parser(p)->on_header_value(at, len);
  }
  static int header_value_complete(llhttp_t* p) {
    return from_parser(p)->on_header_value_complete();
  }
  static int headers_complete(llhttp_t* p) { return from_parser(p)->on_headers_complete(); }
  static int body(llhttp_t* p, const char* at, size_t len) {
    return from_parser(p)->on_body(at, len);
  }
  static int message_complete(llhttp_t* p) { return from_parser(p)->on_message_complete(); }

  static const llhttp_settings_t* settings() {
    static const llhttp_settings_t s = [] {
      llhttp_settings_t v;
      llhttp_settings_init(&v);
      v.on_message_begin = message_begin;
      v.on_url = url;
      v.on_header_field = header_field;
      v.on_header_field_complete = header_field_complete;
      v.on_header_value = header_value;
      v.on_header_value_complete = header_value_complete;
      v.on_headers_complete = headers_complete;
      v.on_body = body;
      v.on_message_complete = message_complete;
      return v;
    }();
    return &s;
  }
};

// ---------------------------------------------------------------------------------------
// Connection lifecycle

Connection::Connection(Worker* worker) : worker_(worker) {}

Connection::~Connection() {
  if (sha_ != nullptr) EVP_MD_CTX_free(sha_);
}

void Connection::start(uv_stream_t* server) {
  uv_tcp_init(worker_->loop(), &tcp_);
  uv_timer_init(worker_->loop(), &timer_);
  tcp_.data = this;
  timer_.data = this;
  open_handles_ = 2;
  state_ = State::kReading;
  timer_use_ = TimerUse::kNone;
  reading_ = writing_ = stream_writing_ = peer_eof_ = close_after_ = false;
  out_.clear();
  inflight_.clear();
  pending_in_.clear();
  pending_off_ = 0;
  llhttp_init(&parser_, HTTP_REQUEST, ParserCallbacks::settings());
  parser_.data = this;

  if (uv_accept(server, stream()) != 0) {
    close();
    return;
  }
  // Responses go out in one write per batch; Nagle would only delay the last one.
  uv_tcp_nodelay(&tcp_, 1);
  last_active_ = uv_now(worker_->loop());
  arm_idle();
  update_reading();
}

void Connection::close() {
  if (state_ == State::kClosing) return;
  state_ = State::kClosing;
  reading_ = false;
  auto closed = [](uv_handle_t* h) { static_cast<Connection*>(h->data)->on_handle_closed(); };
  // Closing the stream cancels queued writes and the shutdown; their callbacks run first.
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), closed);
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), closed);
}

void Connection::on_handle_closed() {
  if (--open_handles_ == 0) worker_->release(this);
}

// ---------------------------------------------------------------------------------------
// Input

void Connection::update_reading() {
  bool want = false;
  if (!peer_eof_) {
    switch (state_) {
      case State::kReading:
        want = pending_off_ >= pending_in_.size() && queued_bytes() < kHighWater;
        break;
      case State::kTunnel: want = queued_bytes() < kHighWater; break;
      case State::kLingering: want = true; break;
      default: break;
    }
  }
  if (want == reading_) return;
  reading_ = want;
  if (want) {
    uv_read_start(
        stream(),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* c = static_cast<Connection*>(h->data);
          *buf = uv_buf_init(c->worker_->read_buffer(), Worker::kReadBufferSize);
        },
        [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
          static_cast<Connection*>(s->data)->on_read(nread, buf);
        });
  } else {
    uv_read_stop(stream());
  }
}

void Connection::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (nread == 0) return;  // EAGAIN
  if (nread < 0) {
    if (nread == UV_EOF) {
      on_peer_eof();
    } else {
      close();
    }
    return;
  }
  last_active_ = uv_now(worker_->loop());
  switch (state_) {
    case State::kReading: feed(buf->base, static_cast<size_t>(nread), false); return;
    case State::kTunnel:
      out_.append(buf->base, static_cast<size_t>(nread));
      flush();
      update_reading();
      return;
    default: return;  // lingering: discard
  }
}

void Connection::on_peer_eof() {
  peer_eof_ = true;
  update_reading();
  switch (state_) {
    case State::kReading:
    case State::kTunnel:
      // A half-close still deserves the answers (or echoed bytes) already owed.
      if (writing_ || !out_.empty()) {
        state_ = State::kDraining;
        flush();
      } else {
        close();
      }
      return;
    case State::kLingering: close(); return;
    default: return;
  }
}

void Connection::feed(const char* data, size_t len, bool from_pending) {
  const char* p = data;
  const char* const end = data + len;
  while (true) {
    const llhttp_errno_t err = llhttp_execute(&parser_, p, static_cast<size_t>(end - p));
    if (err == HPE_OK) {
      p = end;
      break;
    }
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
      p = llhttp_get_error_pos(&parser_);
      if (err == HPE_PAUSED_UPGRADE && state_ == State::kReading) {
        // An Upgrade we did not accept: the connection stays HTTP/1.1 (RFC 9110 7.8).
        llhttp_resume_after_upgrade(&parser_);
        continue;
      }
      break;
    }
    reject(err);
    p = end;
    break;
  }
  if (state_ == State::kClosing) return;

  const size_t left = static_cast<size_t>(end - p);
  if (state_ == State::kWaiting || state_ == State::kStreaming) {
    // Pipelined input behind an async answer waits for it, in our own buffer because the
    // worker's read buffer is reused by the next read of any connection.
    if (from_pending) {
      pending_off_ = static_cast<size_t>(p - pending_in_.data());
    } else if (left != 0) {
      pending_in_.assign(p, left);
      pending_off_ = 0;
    }
  } else {
    if (state_ == State::kTunnel && left != 0) out_.append(p, left);  // first tunnel bytes
    // Anything else left over follows a response that closes the connection: drop it.
    pending_in_.clear();
    pending_off_ = 0;
  }
  after_parse();
}

void Connection::after_parse() {
  flush();
  if (state_ == State::kClosing) return;
  if (state_ == State::kWaiting && timer_use_ != TimerUse::kDelay) {
    timer_use_ = TimerUse::kDelay;
    uv_timer_start(
        &timer_, [](uv_timer_t* t) { static_cast<Connection*>(t->data)->on_timer(); },
        delay_ms_, 0);
  }
  update_reading();
}

void Connection::reject(llhttp_errno_t err) {
  const Site& site = *worker_->shared().site;
  const int status = reject_status_ != 0 ? reject_status_ : 400;
  if (!worker_->shared().quiet) {
    std::fprintf(stderr, "demo storefront %s: %d for a malformed request: %s (%s)\n",
                 site.name().c_str(), status, llhttp_errno_name(err),
                 llhttp_get_error_reason(&parser_));
  }
  const PrebuiltResponse& r = status == 414   ? site.uri_too_long
                              : status == 431 ? site.headers_too_large
                                              : site.bad_request;
  site.append(out_, r, ConnHeader::kClose, false);
  state_ = State::kDraining;
}

// ---------------------------------------------------------------------------------------
// llhttp callbacks

int Connection::on_message_begin() {
  url_.clear();
  hbuf_.clear();
  headers_.clear();
  trailers_begin_ = SIZE_MAX;
  field_open_ = false;
  body_bytes_ = 0;
  reject_status_ = 0;
  return 0;
}

int Connection::on_url(const char* at, size_t len) {
  if (url_.size() + len > kMaxTarget) {
    reject_status_ = 414;
    return -1;
  }
  url_.append(at, len);
  return 0;
}

int Connection::on_header_field(const char* at, size_t len) {
  if (hbuf_.size() + len > kMaxHeaderBytes) {
    reject_status_ = 431;
    return -1;
  }
  if (!field_open_) {
    if (headers_.size() == kMaxHeaders) {
      reject_status_ = 431;
      return -1;
    }
    field_open_ = true;
    headers_.push_back({static_cast<uint32_t>(hbuf_.size()), 0, 0, 0});
  }
  hbuf_.append(at, len);
  return 0;
}

int Connection::on_header_field_complete() {
  HeaderSpan& h = headers_.back();
  h.name_len = static_cast<uint32_t>(hbuf_.size()) - h.name_off;
  h.value_off = static_cast<uint32_t>(hbuf_.size());
  field_open_ = false;
  return 0;
}

int Connection::on_header_value(const char* at, size_t len) {
  if (hbuf_.size() + len > kMaxHeaderBytes) {
    reject_status_ = 431;
    return -1;
  }
  hbuf_.append(at, len);
  return 0;
}

int Connection::on_header_value_complete() {
  // llhttp strips leading whitespace but keeps trailing OWS, which is not part of the value.
  while (hbuf_.size() > headers_.back().value_off &&
         (hbuf_.back() == ' ' || hbuf_.back() == '\t')) {
    hbuf_.pop_back();
  }
  HeaderSpan& h = headers_.back();
  h.value_len = static_cast<uint32_t>(hbuf_.size()) - h.value_off;
  return 0;
}

int Connection::on_headers_complete() {
  trailers_begin_ = headers_.size();
  route_ = match_route(url_);
  head_only_ = parser_.method == HTTP_HEAD;
  if (route_.id == RouteId::kEcho) {
    if (sha_ == nullptr) sha_ = EVP_MD_CTX_new();
    EVP_DigestInit_ex(sha_, worker_->shared().sha256, nullptr);
  }
  const bool has_body = (parser_.flags & F_CHUNKED) != 0 || parser_.content_length > 0;
  std::string_view expect;
  if (has_body && parser_.http_major == 1 && parser_.http_minor >= 1 &&
      find_header("expect", &expect) && iequals(expect, "100-continue")) {
    // Written after this batch is parsed, which is when a client waiting for it stops sending.
    worker_->shared().site->append_interim(out_, 100);
  }
  return 0;
}

int Connection::on_body(const char* at, size_t len) {
  body_bytes_ += len;
  if (route_.id == RouteId::kEcho) EVP_DigestUpdate(sha_, at, len);
  return 0;
}

int Connection::on_message_complete() {
  if (route_.id != RouteId::kCounter) {
    worker_->shared().requests.fetch_add(1, std::memory_order_relaxed);
  }
  if (!llhttp_should_keep_alive(&parser_)) {
    conn_ = ConnHeader::kClose;
  } else {
    conn_ = parser_.http_minor == 0 ? ConnHeader::kKeepAlive : ConnHeader::kNone;
  }
  respond();
  if (state_ == State::kReading && conn_ == ConnHeader::kClose) state_ = State::kDraining;
  // Pausing hands control back to feed(), which keeps whatever input follows this request.
  return state_ == State::kReading ? 0 : HPE_PAUSED;
}

// ---------------------------------------------------------------------------------------
// Headers

bool Connection::find_header(std::string_view name, std::string_view* value) const {
  const size_t n = std::min(trailers_begin_, headers_.size());
  for (size_t i = 0; i < n; ++i) {
    if (iequals(header_name(i), name)) {
      *value = header_value(i);
      return true;
    }
  }
  return false;
}

bool Connection::any_header_has_token(std::string_view name, std::string_view token) const {
  const size_t n = std::min(trailers_begin_, headers_.size());
  for (size_t i = 0; i < n; ++i) {
    if (iequals(header_name(i), name) && has_token(header_value(i), token)) return true;
  }
  return false;
}

bool Connection::find_cookie(std::string_view name, std::string_view* value) const {
  const size_t n = std::min(trailers_begin_, headers_.size());
  for (size_t i = 0; i < n; ++i) {
    if (iequals(header_name(i), "cookie") && cookie_value(header_value(i), name, value)) {
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------
// Answers

void Connection::respond_json(int status, std::string_view body) {
  worker_->shared().site->append_response(out_, status, kJson, body, conn_, head_only_);
}

void Connection::respond_error(int status, std::string_view message) {
  std::string& b = worker_->body_scratch();
  b.assign("{\"error\":");
  append_json_string(b, message);
  b.append("}\n");
  respond_json(status, b);
}

void Connection::respond() {
  const Site& site = *worker_->shared().site;
  const auto method = static_cast<llhttp_method_t>(parser_.method);
  if (!method_allowed(route_.allow, method)) {
    site.append(out_,
                route_.allow == Allow::kPost ? site.method_not_allowed_post
                                             : site.method_not_allowed_get,
                conn_, head_only_);
    return;
  }
  std::string& b = worker_->body_scratch();
  b.clear();
  std::string_view value;
  switch (route_.id) {
    case RouteId::kHome: site.append(out_, site.home, conn_, head_only_); return;
    case RouteId::kItemList: site.append(out_, site.item_list, conn_, head_only_); return;
    case RouteId::kFail: site.append(out_, site.fail, conn_, head_only_); return;
    case RouteId::kNotFound: site.append(out_, site.not_found, conn_, head_only_); return;
    case RouteId::kHealthz:
      site.append(out_,
                  worker_->shared().healthy.load(std::memory_order_relaxed) ? site.healthz_up
                                                                            : site.healthz_down,
                  conn_, head_only_);
      return;

    case RouteId::kItemPage:
      append_item_html(b, synth_item(route_.param));
      site.append_response(out_, 200, kHtml, b, conn_, head_only_);
      return;
    case RouteId::kItem:
      append_item_json(b, synth_item(route_.param));
      b.push_back('\n');
      respond_json(200, b);
      return;
    case RouteId::kItemPrice: {
      const Item item = synth_item(route_.param);
      b.append("{\"id\":\"").append(item.id).append("\",\"price\":");
      append_price(b, item.price_cents);
      b.append("}\n");
      respond_json(200, b);
      return;
    }
    case RouteId::kItemStock: {
      const Item item = synth_item(route_.param);
      b.append("{\"id\":\"").append(item.id).append("\",\"stock\":");
      append_uint(b, item.stock);
      b.append("}\n");
      respond_json(200, b);
      return;
    }
    case RouteId::kCart:
      b.append("{\"ok\":true,\"member\":");
      if (find_cookie("member", &value)) {
        append_json_string(b, value);
      } else {
        b.append("null");
      }
      b.append(",\"bytes\":");
      append_uint(b, body_bytes_);
      b.append("}\n");
      respond_json(200, b);
      return;
    case RouteId::kCheckout:
      b.append("{\"ok\":true,\"order_id\":\"").append(site.name()).push_back('-');
      append_uint(b, static_cast<uint64_t>(worker_->index()));
      b.push_back('-');
      append_uint(b, worker_->next_order());
      b.append("\",\"item\":\"").append(route_.param).append("\",\"member\":");
      if (find_cookie("member", &value)) {
        append_json_string(b, value);
      } else {
        b.append("null");
      }
      b.append(",\"device\":");
      if (find_cookie("device", &value)) {
        append_json_string(b, value);
      } else {
        b.append("null");
      }
      b.append("}\n");
      respond_json(200, b);
      return;
    case RouteId::kCounter:
      b.append("{\"requests\":");
      append_uint(b, worker_->shared().requests.load(std::memory_order_relaxed));
      b.append("}\n");
      respond_json(200, b);
      return;
    case RouteId::kHealth:
      if (query_param(route_.query, "status", &value) && (value == "up" || value == "down")) {
        worker_->shared().healthy.store(value == "up", std::memory_order_relaxed);
        b.append("{\"health\":\"").append(value).append("\"}\n");
        respond_json(200, b);
      } else {
        respond_error(400, "status must be up or down");
      }
      return;

    case RouteId::kSlow: {
      uint64_t ms = 0;
      if (query_param(route_.query, "ms", &value) && !parse_u64(value, &ms)) {
        respond_error(400, "ms must be a non-negative integer");
        return;
      }
      delayed_route_ = RouteId::kSlow;
      start_delay(std::min(ms, kMaxSlowMs));
      return;
    }
    case RouteId::kEarlyHints: {
      uint64_t ms = 0;
      if (query_param(route_.query, "ms", &value) && !parse_u64(value, &ms)) {
        respond_error(400, "ms must be a non-negative integer");
        return;
      }
      // 1xx responses must not be sent to HTTP/1.0 clients (RFC 9110 15.2).
      if (parser_.http_minor >= 1) {
        site.append_interim(out_, 103,
                            "Link: </static/storefront.css>; rel=preload; as=style\r\n");
      }
      delayed_route_ = RouteId::kEarlyHints;
      if (ms == 0) {
        respond_delayed();
      } else {
        start_delay(std::min(ms, kMaxSlowMs));
      }
      return;
    }
    case RouteId::kEcho: respond_echo(); return;
    case RouteId::kBytes: respond_bytes(); return;
    case RouteId::kStatus: respond_status(); return;
    case RouteId::kWebSocket: respond_websocket(); return;
  }
}

void Connection::start_delay(uint64_t ms) {
  // The timer starts in after_parse(), once llhttp has returned.
  state_ = State::kWaiting;
  delay_ms_ = ms;
  close_after_ = conn_ == ConnHeader::kClose;
  timer_use_ = TimerUse::kNone;
}

void Connection::respond_delayed() {
  std::string& b = worker_->body_scratch();
  b.clear();
  if (delayed_route_ == RouteId::kSlow) {
    b.append("{\"slept_ms\":");
    append_uint(b, delay_ms_);
    b.append("}\n");
    respond_json(200, b);
  } else {
    b.append("<!doctype html>\n<html><head><link rel=\"stylesheet\" "
             "href=\"/static/storefront.css\"></head><body>early hints</body></html>\n");
    worker_->shared().site->append_response(out_, 200, kHtml, b, conn_, head_only_,
                                            "Link: </static/storefront.css>; rel=preload; "
                                            "as=style\r\n");
  }
}

void Connection::respond_echo() {
  std::string& b = worker_->body_scratch();
  b.append("{\"method\":");
  append_json_string(b, llhttp_method_name(static_cast<llhttp_method_t>(parser_.method)));
  b.append(",\"path\":");
  append_json_string(b, url_);
  b.append(",\"version\":\"");
  append_uint(b, parser_.http_major);
  b.push_back('.');
  append_uint(b, parser_.http_minor);
  b.append("\",\"headers\":[");
  const size_t n = headers_.size();
  for (size_t i = 0; i < n; ++i) {
    if (i == trailers_begin_) b.append("],\"trailers\":[");
    else if (i != 0) b.push_back(',');
    b.push_back('[');
    append_json_string(b, header_name(i));
    b.push_back(',');
    append_json_string(b, header_value(i));
    b.push_back(']');
  }
  if (trailers_begin_ >= n) b.append("],\"trailers\":[");
  b.append("],\"body_bytes\":");
  append_uint(b, body_bytes_);
  b.append(",\"body_sha256\":\"");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_DigestFinal_ex(sha_, md, &md_len);
  static constexpr char kHex[] = "0123456789abcdef";
  for (unsigned int i = 0; i < md_len; ++i) {
    b.push_back(kHex[md[i] >> 4]);
    b.push_back(kHex[md[i] & 15]);
  }
  b.append("\"}\n");
  respond_json(200, b);
}

void Connection::respond_bytes() {
  uint64_t n = 0;
  uint64_t chunk = kDefaultChunk;
  std::string_view value;
  if (!query_param(route_.query, "n", &value) || !parse_u64(value, &n) || n > kMaxBytes) {
    respond_error(400, "n must be an integer between 0 and 2^40");
    return;
  }
  if (query_param(route_.query, "chunk", &value) &&
      (!parse_u64(value, &chunk) || chunk == 0 || chunk > kMaxChunk)) {
    respond_error(400, "chunk must be an integer between 1 and 1048576");
    return;
  }
  // HTTP/1.0 has no chunked coding; those clients get a Content-Length instead.
  const bool chunked = query_param(route_.query, "chunked", &value) && value == "1" &&
                       parser_.http_minor >= 1;
  const Site& site = *worker_->shared().site;
  if (chunked) {
    site.append_head(out_, 200, "application/octet-stream", -1, conn_,
                     "Transfer-Encoding: chunked\r\n");
  } else {
    site.append_head(out_, 200, "application/octet-stream", static_cast<int64_t>(n), conn_);
  }
  if (head_only_ || n == 0) {
    if (!head_only_ && chunked) out_.append("0\r\n\r\n");
    return;
  }
  if (!scratch_) scratch_ = std::make_unique<StreamScratch>();
  state_ = State::kStreaming;
  close_after_ = conn_ == ConnHeader::kClose;
  stream_left_ = n;
  stream_pos_ = 0;
  stream_chunk_ = static_cast<uint32_t>(chunk);
  stream_chunked_ = chunked;
}

void Connection::respond_status() {
  uint64_t code = 0;
  if (!parse_u64(route_.param, &code) || code < 200 || code > 599) {
    respond_error(400, "status must be between 200 and 599");
    return;
  }
  const int status = static_cast<int>(code);
  const Site& site = *worker_->shared().site;
  if (status_forbids_body(status)) {
    site.append_head(out_, status, {}, -1, conn_);
    return;
  }
  std::string& b = worker_->body_scratch();
  b.append("{\"status\":");
  append_uint(b, code);
  b.append("}\n");
  respond_json(status, b);
}

void Connection::respond_websocket() {
  const Site& site = *worker_->shared().site;
  std::string_view key;
  const bool wants_upgrade = parser_.upgrade && parser_.method == HTTP_GET &&
                             parser_.http_minor >= 1 &&
                             any_header_has_token("upgrade", "websocket") &&
                             any_header_has_token("connection", "upgrade");
  if (!wants_upgrade) {
    site.append(out_, site.upgrade_required, conn_, head_only_);
    return;
  }
  if (!find_header("sec-websocket-key", &key) || key.empty() || key.size() > 256) {
    respond_error(400, "missing Sec-WebSocket-Key");
    return;
  }
  char joined[256 + kWebSocketGuid.size()];
  std::memcpy(joined, key.data(), key.size());
  std::memcpy(joined + key.size(), kWebSocketGuid.data(), kWebSocketGuid.size());
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  EVP_Digest(joined, key.size() + kWebSocketGuid.size(), digest, &digest_len,
             worker_->shared().sha1, nullptr);
  unsigned char accept[64];
  const int accept_len = EVP_EncodeBlock(accept, digest, static_cast<int>(digest_len));
  std::string& extra = worker_->body_scratch();
  extra.assign("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
  extra.append(reinterpret_cast<const char*>(accept), static_cast<size_t>(accept_len));
  extra.append("\r\n");
  site.append_head(out_, 101, {}, -1, ConnHeader::kNone, extra);
  state_ = State::kTunnel;
  if (timer_use_ != TimerUse::kIdle) arm_idle();
}

void Connection::finish_async() {
  if (close_after_) {
    state_ = State::kDraining;
    pending_in_.clear();
    pending_off_ = 0;
    flush();
    return;
  }
  state_ = State::kReading;
  arm_idle();
  llhttp_resume(&parser_);
  if (pending_off_ < pending_in_.size()) {
    feed(pending_in_.data() + pending_off_, pending_in_.size() - pending_off_, true);
  } else {
    pending_in_.clear();
    pending_off_ = 0;
    after_parse();
  }
}

// ---------------------------------------------------------------------------------------
// Output

size_t Connection::queued_bytes() const {
  return out_.size() + uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&tcp_));
}

void Connection::flush() {
  if (state_ == State::kClosing || writing_) return;
  if (out_.empty()) {
    if (!stream_writing_) on_drained();
    return;
  }
  // Try the syscall now: most answers fit the socket buffer and need no request or callback.
  uv_buf_t buf = uv_buf_init(out_.data(), static_cast<unsigned int>(out_.size()));
  int n = stream_writing_ ? UV_EAGAIN : uv_try_write(stream(), &buf, 1);
  if (n == UV_EAGAIN) n = 0;
  if (n < 0) {
    close();
    return;
  }
  if (static_cast<size_t>(n) == out_.size()) {
    out_.clear();
    on_drained();
    return;
  }
  // Hand the rest to libuv; out_ keeps collecting while that write is in flight.
  inflight_.swap(out_);
  out_.clear();
  writing_ = true;
  buf = uv_buf_init(inflight_.data() + n, static_cast<unsigned int>(inflight_.size() - n));
  const int rc = uv_write(&write_req_, stream(), &buf, 1, [](uv_write_t* req, int status) {
    static_cast<Connection*>(req->handle->data)->on_write(status);
  });
  if (rc != 0) {
    writing_ = false;
    close();
  }
}

void Connection::on_write(int status) {
  writing_ = false;
  inflight_.clear();
  if (status < 0 || state_ == State::kClosing) {
    close();
    return;
  }
  last_active_ = uv_now(worker_->loop());
  flush();
  if (state_ != State::kClosing) update_reading();
}

void Connection::on_drained() {
  switch (state_) {
    case State::kStreaming: pump_stream(); return;
    case State::kDraining: begin_shutdown(); return;
    default: return;
  }
}

void Connection::pump_stream() {
  if (stream_writing_ || writing_ || !out_.empty() || stream_left_ == 0) return;
  StreamScratch& s = *scratch_;
  const char* const pat = pattern();
  size_t nbufs = 0;
  size_t budget = kStreamBatch;
  auto add_data = [&](uint64_t len) {
    while (len > 0) {
      const size_t piece = static_cast<size_t>(std::min<uint64_t>(len, kPatternSpan));
      s.bufs[nbufs++] = uv_buf_init(const_cast<char*>(pat + stream_pos_ % 26),
                                    static_cast<unsigned int>(piece));
      stream_pos_ += piece;
      len -= piece;
    }
  };
  if (!stream_chunked_) {
    const uint64_t len = std::min<uint64_t>(stream_left_, budget);
    add_data(len);
    stream_left_ -= len;
  } else {
    for (size_t chunks = 0; chunks < kMaxStreamChunks && budget > 0 && stream_left_ > 0;
         ++chunks) {
      const uint64_t len = std::min<uint64_t>(stream_chunk_, stream_left_);
      const size_t pieces = static_cast<size_t>((len + kPatternSpan - 1) / kPatternSpan);
      if (nbufs + pieces + 2 > kMaxStreamBufs) break;
      char* head = s.heads[chunks].data();
      const int head_len = std::snprintf(head, s.heads[chunks].size(), "%llx\r\n",
                                         static_cast<unsigned long long>(len));
      s.bufs[nbufs++] = uv_buf_init(head, static_cast<unsigned int>(head_len));
      add_data(len);
      s.bufs[nbufs++] = uv_buf_init(const_cast<char*>(kCrlf), 2);
      stream_left_ -= len;
      budget -= std::min<uint64_t>(budget, len);
    }
  }
  stream_writing_ = true;
  const int rc = uv_write(&stream_req_, stream(), s.bufs.data(), static_cast<unsigned int>(nbufs),
                          [](uv_write_t* req, int status) {
                            static_cast<Connection*>(req->handle->data)->on_stream_write(status);
                          });
  if (rc != 0) {
    stream_writing_ = false;
    close();
  }
}

void Connection::on_stream_write(int status) {
  stream_writing_ = false;
  if (status < 0 || state_ == State::kClosing) {
    close();
    return;
  }
  last_active_ = uv_now(worker_->loop());
  if (stream_left_ > 0) {
    pump_stream();
    return;
  }
  if (stream_chunked_) out_.append("0\r\n\r\n");
  finish_async();
}

void Connection::begin_shutdown() {
  if (state_ != State::kDraining) return;
  // Input read from here on is discarded (see on_shutdown).
  state_ = State::kLingering;
  const int rc = uv_shutdown(&shutdown_req_, stream(), [](uv_shutdown_t* req, int status) {
    static_cast<Connection*>(req->handle->data)->on_shutdown(status);
  });
  if (rc != 0) close();
}

void Connection::on_shutdown(int status) {
  if (status < 0 || peer_eof_ || state_ == State::kClosing) {
    close();
    return;
  }
  // Closing with unread input would send a reset, which can destroy the response we just sent
  // before the peer reads it; read and discard until EOF instead, for a bounded time.
  timer_use_ = TimerUse::kLinger;
  uv_timer_start(
      &timer_, [](uv_timer_t* t) { static_cast<Connection*>(t->data)->on_timer(); }, kLingerMs,
      0);
  update_reading();
}

// ---------------------------------------------------------------------------------------
// Timer

void Connection::arm_idle() {
  const uint64_t idle = worker_->shared().idle_timeout_ms;
  if (idle == 0) {
    timer_use_ = TimerUse::kNone;
    uv_timer_stop(&timer_);
    return;
  }
  // Armed once per idle period, not per request: the callback re-arms itself from
  // last_active_, which the hot path updates with a plain store.
  timer_use_ = TimerUse::kIdle;
  uv_timer_start(
      &timer_, [](uv_timer_t* t) { static_cast<Connection*>(t->data)->on_timer(); }, idle, 0);
}

void Connection::on_timer() {
  switch (timer_use_) {
    case TimerUse::kNone: return;
    case TimerUse::kLinger: close(); return;
    case TimerUse::kIdle: {
      const uint64_t idle = worker_->shared().idle_timeout_ms;
      const uint64_t since = uv_now(worker_->loop()) - last_active_;
      if (since >= idle) {
        close();
      } else {
        uv_timer_start(
            &timer_, [](uv_timer_t* t) { static_cast<Connection*>(t->data)->on_timer(); },
            idle - since, 0);
      }
      return;
    }
    case TimerUse::kDelay:
      timer_use_ = TimerUse::kNone;
      if (state_ != State::kWaiting) return;
      respond_delayed();
      finish_async();
      return;
  }
}

// ---------------------------------------------------------------------------------------
// Worker

Worker::Worker(int index, Shared* shared)
    : index_(index), shared_(shared), read_buf_(new char[kReadBufferSize]) {
  uv_loop_init(&loop_);
  uv_tcp_init(&loop_, &listener_);
  listener_.data = this;
  uv_async_init(&loop_, &stop_, [](uv_async_t* a) { static_cast<Worker*>(a->data)->on_stop(); });
  stop_.data = this;
}

Worker::~Worker() {
  for (Connection* c : spare_) delete c;
}

int Worker::listen(int fd) {
  if (const int rc = uv_tcp_open(&listener_, fd); rc != 0) return rc;
  const int rc = uv_listen(reinterpret_cast<uv_stream_t*>(&listener_), 4096,
                           [](uv_stream_t* s, int status) {
                             static_cast<Worker*>(s->data)->on_connection(status);
                           });
  return rc;
}

void Worker::run() {
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

void Worker::request_stop() { uv_async_send(&stop_); }

void Worker::on_stop() {
  uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
  uv_close(reinterpret_cast<uv_handle_t*>(&stop_), nullptr);
  for (Connection* c = live_; c != nullptr; c = c->next) c->close();
}

void Worker::on_connection(int status) {
  if (status < 0) return;
  Connection* c;
  if (spare_.empty()) {
    c = new Connection(this);
  } else {
    c = spare_.back();
    spare_.pop_back();
  }
  c->prev = nullptr;
  c->next = live_;
  if (live_ != nullptr) live_->prev = c;
  live_ = c;
  c->start(reinterpret_cast<uv_stream_t*>(&listener_));
}

void Worker::release(Connection* c) {
  if (c->prev != nullptr) c->prev->next = c->next;
  else live_ = c->next;
  if (c->next != nullptr) c->next->prev = c->prev;
  c->prev = c->next = nullptr;
  // Keep a bounded number for reuse; buffers that grew huge (a big echo) are let go.
  if (spare_.size() < 256 && c->out_.capacity() <= kHighWater &&
      c->hbuf_.capacity() <= 2 * kMaxHeaderBytes) {
    spare_.push_back(c);
  } else {
    delete c;
  }
}

}  // namespace sluice::demo
