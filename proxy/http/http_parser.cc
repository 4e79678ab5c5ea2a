#include "proxy/http/http_parser.h"

#include <cstring>

namespace sluice {

namespace {
HttpParser* self(llhttp_t* p) { return static_cast<HttpParser*>(p->data); }
}  // namespace

HttpParser::HttpParser(llhttp_type_t type, const HttpParserLimits& limits,
                       HttpParserDelegate* delegate)
    : limits_(limits), delegate_(delegate) {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = onMessageBeginCb;
  settings_.on_url = onUrlCb;
  settings_.on_status = onStatusCb;
  settings_.on_header_field = onHeaderFieldCb;
  settings_.on_header_value = onHeaderValueCb;
  settings_.on_header_value_complete = onHeaderValueCompleteCb;
  settings_.on_headers_complete = onHeadersCompleteCb;
  settings_.on_body = onBodyCb;
  settings_.on_message_complete = onMessageCompleteCb;
  llhttp_init(&parser_, type, &settings_);
  parser_.data = this;
}

void HttpParser::reset() {
  llhttp_reset(&parser_);
  parser_.data = this;
  in_message_ = false;
  headers_done_ = false;
  head_scan_done_ = false;
}

int HttpParser::fail(int status, const char* reason) {
  error_status_ = status;
  error_reason_ = reason;
  return -1;
}

bool HttpParser::scanHeadForObsFold(const char* p, size_t n) {
  // Jumps from line end to line end with memchr: only the byte after each LF is inspected.
  size_t i = 0;
  if (!head_scan_line_) {
    // llhttp skips any CR and LF before the start line; so must we, or "\r\n\r\n" ahead of a
    // request read as the head's end and let a fold below through (found by tests/fuzz).
    while (i < n && (p[i] == '\r' || p[i] == '\n')) i++;
    if (i == n) return true;
    head_scan_line_ = true;
    head_scan_state_ = 0;  // inside the start line
  }
  while (i < n && !head_scan_done_) {
    if (head_scan_state_ == 1) {  // at the first byte of a line
      char c = p[i];
      if ((c == ' ' || c == '\t') && head_scan_line_) return false;
      if (c == '\r') {
        head_scan_state_ = 2;  // maybe the blank line
        i++;
        continue;
      }
      if (c == '\n' && head_scan_line_) {
        head_scan_done_ = true;
        break;
      }
      head_scan_state_ = 0;
      if (c != '\n') head_scan_line_ = true;
    } else if (head_scan_state_ == 2) {  // a line that began with CR
      if (p[i] == '\n' && head_scan_line_) {
        head_scan_done_ = true;
        break;
      }
      head_scan_state_ = 0;
      head_scan_line_ = true;
    }
    const void* lf = memchr(p + i, '\n', n - i);
    if (!lf) {
      if (i < n) head_scan_line_ = true;
      break;
    }
    size_t at = static_cast<size_t>(static_cast<const char*>(lf) - p);
    if (at > i) head_scan_line_ = true;
    head_scan_state_ = 1;
    i = at + 1;
  }
  return true;
}

HttpParser::Result HttpParser::execute(const char* data, size_t len) {
  if (!in_message_) {
    // Every execute() outside a message starts at a message's first byte (requests and final
    // responses pause at their end).
    head_scan_state_ = 0;
    head_scan_line_ = false;
    head_scan_done_ = false;
  }
  if (!head_scan_done_ && !scanHeadForObsFold(data, len)) {
    fail(400, "obsolete line folding in header");
    return {Status::kError, 0};
  }
  llhttp_errno_t err = llhttp_execute(&parser_, data, len);
  switch (err) {
    case HPE_OK:
      return {Status::kOk, len};
    case HPE_PAUSED:
      return {Status::kPaused, static_cast<size_t>(llhttp_get_error_pos(&parser_) - data)};
    case HPE_PAUSED_UPGRADE:
      return {Status::kUpgrade, static_cast<size_t>(llhttp_get_error_pos(&parser_) - data)};
    default:
      if (error_status_ == 0) {
        error_status_ = 400;
        error_reason_ = llhttp_get_error_reason(&parser_) ? llhttp_get_error_reason(&parser_)
                                                         : llhttp_errno_name(err);
      }
      return {Status::kError, 0};
  }
}

bool HttpParser::finish() { return llhttp_finish(&parser_) == HPE_OK; }

bool HttpParser::checkHeaderBytes(size_t n) {
  header_bytes_ += n;
  return header_bytes_ <= limits_.max_header_size;
}

int HttpParser::onMessageBeginCb(llhttp_t* p) {
  auto* s = self(p);
  s->head_.clear();
  s->in_message_ = true;
  s->headers_done_ = false;
  s->last_was_value_ = true;
  s->header_bytes_ = 0;
  return s->delegate_->onMessageBegin();
}

int HttpParser::onUrlCb(llhttp_t* p, const char* at, size_t n) {
  auto* s = self(p);
  if (s->head_.target.size() + n > s->limits_.max_uri_size) return s->fail(414, "URI too long");
  s->head_.target.append(at, n);
  return 0;
}

int HttpParser::onStatusCb(llhttp_t* p, const char* at, size_t n) {
  auto* s = self(p);
  if (s->head_.reason.size() + n > 1024) return s->fail(502, "status line too long");
  s->head_.reason.append(at, n);
  return 0;
}

int HttpParser::onHeaderFieldCb(llhttp_t* p, const char* at, size_t n) {
  auto* s = self(p);
  if (!s->checkHeaderBytes(n)) return s->fail(431, "request header fields too large");
  bool new_field = s->last_was_value_;
  if (new_field && s->head_.headers.size() >= s->limits_.max_headers)
    return s->fail(431, "too many header fields");
  s->head_.headers.appendName(at, n, new_field);
  s->last_was_value_ = false;
  return 0;
}

int HttpParser::onHeaderValueCb(llhttp_t* p, const char* at, size_t n) {
  auto* s = self(p);
  if (!s->checkHeaderBytes(n)) return s->fail(431, "request header fields too large");
  s->head_.headers.appendValue(at, n);
  s->last_was_value_ = true;
  return 0;
}

int HttpParser::onHeaderValueCompleteCb(llhttp_t* p) {
  // A field with an empty value never calls on_header_value; mark it done all the same.
  auto* s = self(p);
  s->last_was_value_ = true;
  if (!s->head_.headers.finishField()) return s->fail(400, "empty header name");
  return 0;
}

int HttpParser::onHeadersCompleteCb(llhttp_t* p) {
  auto* s = self(p);
  // llhttp takes any three digits; "000".."099" is no status (RFC 9110 15) and would go out to
  // the client as a malformed status line (found by tests/fuzz http_response).
  if (p->type == HTTP_RESPONSE && p->status_code < 100) return s->fail(502, "invalid status code");
  auto& h = s->head_;
  h.method = p->method;
  h.method_name = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
  h.status = p->status_code;
  h.version_major = p->http_major;
  h.version_minor = p->http_minor;
  h.keep_alive = llhttp_should_keep_alive(p) != 0;
  h.chunked = (p->flags & F_CHUNKED) != 0;
  h.has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
  h.content_length = h.has_content_length ? p->content_length : 0;
  h.upgrade = p->upgrade != 0;
  s->headers_done_ = true;
  int rc = s->delegate_->onHeadersComplete();
  // A 1xx response ends with its header section (RFC 9110 15.2), but llhttp 8 reads a body after
  // one that has Content-Length or chunked: it ate the final response's first bytes, or passed
  // body bytes to the client ahead of the final head (found by tests/fuzz http_response).
  if (rc == 0 && p->type == HTTP_RESPONSE && p->status_code >= 100 && p->status_code < 200 &&
      p->status_code != 101)
    rc = 1;
  return rc;
}

int HttpParser::onBodyCb(llhttp_t* p, const char* at, size_t n) {
  return self(p)->delegate_->onBody(at, n);
}

int HttpParser::onMessageCompleteCb(llhttp_t* p) {
  auto* s = self(p);
  s->in_message_ = false;
  return s->delegate_->onMessageComplete();
}

}  // namespace sluice
