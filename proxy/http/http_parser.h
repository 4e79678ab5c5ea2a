#pragma once
// A thin wrapper over llhttp (compiled with LLHTTP_STRICT_MODE, no lenient flags) that fills an
// HttpMessageHead, enforces size limits while bytes arrive, and maps each failure to the status a
// client should get. Used for client requests and upstream responses alike.
#include <llhttp.h>

#include <cstdint>
#include <string>

#include "proxy/http/header_map.h"

namespace sluice {

struct HttpMessageHead {
  // Request side.
  uint8_t method = 0;                // llhttp_method_t
  std::string_view method_name;      // static string from llhttp
  std::string target;                // request-target as sent
  // Response side.
  int status = 0;
  std::string reason;
  int version_major = 1;
  int version_minor = 1;
  HeaderMap headers;

  // Framing facts, filled at headers-complete.
  bool keep_alive = false;
  bool chunked = false;
  bool has_content_length = false;
  uint64_t content_length = 0;
  bool upgrade = false;              // Upgrade requested (request) or 101 (response)

  void clear() {
    method = 0;
    method_name = {};
    target.clear();
    status = 0;
    reason.clear();
    version_major = version_minor = 1;
    headers.clear();
    keep_alive = chunked = has_content_length = upgrade = false;
    content_length = 0;
  }
  bool isHttp10() const { return version_major == 1 && version_minor == 0; }
};

struct HttpParserLimits {
  uint64_t max_uri_size = 8 * 1024;
  uint64_t max_header_size = 32 * 1024;
  uint32_t max_headers = 100;
};

class HttpParserDelegate {
 public:
  virtual ~HttpParserDelegate() = default;
  virtual int onMessageBegin() = 0;
  // Return 0 to go on, 1 to skip the body (a response to HEAD), 2 to treat the rest as an upgraded
  // tunnel, or HPE_PAUSED to stop after the head.
  virtual int onHeadersComplete() = 0;
  virtual int onBody(const char* p, size_t n) = 0;
  // Return HPE_PAUSED to stop right after this message (pipelining: one request at a time).
  virtual int onMessageComplete() = 0;
};

class HttpParser {
 public:
  enum class Status {
    kOk,       // all bytes consumed
    kPaused,   // a callback paused; `consumed` tells how far it got
    kUpgrade,  // the message completed as an upgrade; bytes from `consumed` on are tunnel data
    kError,    // bad message: see errorStatus() / errorReason()
  };
  struct Result {
    Status status;
    size_t consumed;
  };

  HttpParser(llhttp_type_t type, const HttpParserLimits& limits, HttpParserDelegate* delegate);
  HttpParser(const HttpParser&) = delete;
  HttpParser& operator=(const HttpParser&) = delete;

  Result execute(const char* data, size_t len);
  // Tells the parser the peer closed; returns false if that cut a message short.
  bool finish();
  void resume() { llhttp_resume(&parser_); }
  void reset();
  void setLimits(const HttpParserLimits& l) { limits_ = l; }

  HttpMessageHead& head() { return head_; }
  const HttpMessageHead& head() const { return head_; }
  // True once the first byte of the current message has been seen.
  bool inMessage() const { return in_message_; }
  bool headersDone() const { return headers_done_; }
  // For errors: the status to answer with (400, 413, 414, 431) and a short reason.
  int errorStatus() const { return error_status_; }
  const std::string& errorReason() const { return error_reason_; }
  bool messageNeedsEof() const { return llhttp_message_needs_eof(&parser_) != 0; }
  // A delegate that refuses a message sets the status here and returns -1 from its callback.
  int reject(int status, const char* reason) { return fail(status, reason); }

 private:
  static int onMessageBeginCb(llhttp_t* p);
  static int onUrlCb(llhttp_t* p, const char* at, size_t n);
  static int onStatusCb(llhttp_t* p, const char* at, size_t n);
  static int onHeaderFieldCb(llhttp_t* p, const char* at, size_t n);
  static int onHeaderValueCb(llhttp_t* p, const char* at, size_t n);
  static int onHeaderValueCompleteCb(llhttp_t* p);
  static int onHeadersCompleteCb(llhttp_t* p);
  static int onBodyCb(llhttp_t* p, const char* at, size_t n);
  static int onMessageCompleteCb(llhttp_t* p);
  int fail(int status, const char* reason);
  bool checkHeaderBytes(size_t n);
  // llhttp silently accepts obs-fold (a header line starting with SP/HT); RFC 9112 5.2 lets a
  // server reject it, and a proxy must not let a folded line hide a framing header. Scans the
  // head's raw bytes (up to its blank line); returns false on a fold.
  bool scanHeadForObsFold(const char* p, size_t n);

  llhttp_t parser_;
  llhttp_settings_t settings_;
  HttpParserLimits limits_;
  HttpParserDelegate* delegate_;
  HttpMessageHead head_;
  bool in_message_ = false;
  bool headers_done_ = false;
  bool last_was_value_ = true;
  uint64_t header_bytes_ = 0;
  // scanHeadForObsFold state: 0 inside a line, 1 right after a LF; head_scan_done_ once the
  // blank line ending the head went by; head_scan_line_ once a non-empty line was seen.
  int head_scan_state_ = 0;
  bool head_scan_line_ = false;
  bool head_scan_done_ = false;
  int error_status_ = 0;
  std::string error_reason_;
};

}  // namespace sluice
