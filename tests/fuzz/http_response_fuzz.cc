// Upstream response parsing: HttpParser (HTTP_RESPONSE) driven the way UpstreamConnection drives
// it: interim 1xx responses pause and resume, 101 switches to a tunnel, a response to HEAD skips
// its body, the end of a response pauses, and EOF may end a close-delimited body. Bytes after a
// complete response are parsed as the next response after reset(), as on a reused connection.
//
// Input: [split lo][split hi][mode] then the upstream's bytes; mode bit 0: the request was HEAD
// (bit 1: the second request on the connection was HEAD too). As for requests, the verdict must
// not depend on how the bytes were cut into reads.
#include <string>
#include <vector>

#include "proxy/http/http_parser.h"
#include "tests/fuzz/fuzz_common.h"

namespace sluice {
namespace {

class ResponseDelegate : public HttpParserDelegate {
 public:
  explicit ResponseDelegate(std::string* story) : story_(story) {}
  void attach(HttpParser* p) { parser_ = p; }
  void expect(bool head_request) {
    head_request_ = head_request;
    complete_ = false;
  }
  bool complete() const { return complete_; }
  bool interimPaused() {
    bool was = interim_paused_;
    interim_paused_ = false;
    return was;
  }

  int onMessageBegin() override {
    // UpstreamConnection refuses a second response before the connection is reused.
    return complete_ ? -1 : 0;
  }

  int onHeadersComplete() override {
    const auto& h = parser_->head();
    std::string& s = *story_;
    s += "H " + std::to_string(h.status) + " [" + h.reason + "] v" +
         std::to_string(h.version_major) + "." + std::to_string(h.version_minor);
    s += h.keep_alive ? " ka" : "";
    s += h.chunked ? " chunked" : "";
    s += h.has_content_length ? " cl=" + std::to_string(h.content_length) : "";
    s += '\n';
    FUZZ_CHECK(h.status >= 100 && h.status <= 999);
    FUZZ_CHECK(h.reason.size() <= 1024);
    FUZZ_CHECK(h.headers.size() <= HttpParserLimits{}.max_headers);
    for (size_t i = 0; i < h.headers.size(); i++) {
      FUZZ_CHECK(!h.headers.name(i).empty());
      s += "  ";
      s += h.headers.name(i);
      s += ": ";
      s += h.headers.value(i);
      s += '\n';
    }
    if (h.status >= 100 && h.status < 200 && h.status != 101) {
      interim_ = true;
      return 0;
    }
    interim_ = false;
    if (h.status == 101) return 2;
    return head_request_ ? 1 : 0;
  }

  int onBody(const char* p, size_t n) override {
    FUZZ_CHECK(!head_request_);  // skip-body means no body, whatever Content-Length says
    FUZZ_CHECK(!interim_);       // a 1xx response never has one (RFC 9110 15.2)
    if (!in_body_) *story_ += "B ";
    in_body_ = true;
    story_->append(p, n);
    return 0;
  }

  int onMessageComplete() override {
    in_body_ = false;
    *story_ += "\nE\n";
    if (interim_) {
      interim_ = false;
      interim_paused_ = true;
      return HPE_PAUSED;
    }
    if (parser_->head().status == 101) return 0;
    complete_ = true;
    return HPE_PAUSED;
  }

 private:
  std::string* story_;
  HttpParser* parser_ = nullptr;
  bool head_request_ = false;
  bool interim_ = false;
  bool interim_paused_ = false;
  bool complete_ = false;
  bool in_body_ = false;
};

std::string run(const std::vector<std::string_view>& chunks, uint8_t mode) {
  std::string story;
  ResponseDelegate d(&story);
  HttpParser parser(HTTP_RESPONSE, HttpParserLimits{}, &d);
  d.attach(&parser);
  int exchange = 0;
  d.expect(mode & 1);
  for (std::string_view chunk : chunks) {
    const char* p = chunk.data();
    size_t n = chunk.size();
    while (n > 0) {
      auto r = parser.execute(p, n);
      while (r.status == HttpParser::Status::kPaused && d.interimPaused()) {
        FUZZ_CHECK(r.consumed <= n);
        parser.resume();
        p += r.consumed;
        n -= r.consumed;
        r = n > 0 ? parser.execute(p, n) : HttpParser::Result{HttpParser::Status::kOk, 0};
      }
      if (r.status == HttpParser::Status::kOk) {
        FUZZ_CHECK(r.consumed == n);
        break;
      }
      if (r.status == HttpParser::Status::kUpgrade) {
        FUZZ_CHECK(r.consumed <= n);
        story += "U\n";
        return story;
      }
      if (r.status == HttpParser::Status::kError) {
        FUZZ_CHECK(parser.errorStatus() >= 400 && parser.errorStatus() <= 599);
        story += "X\n";
        return story;
      }
      // Paused at the end of a final response. Reuse the connection for the next exchange.
      FUZZ_CHECK(d.complete());
      FUZZ_CHECK(r.consumed <= n);
      p += r.consumed;
      n -= r.consumed;
      if (++exchange >= 8) return story + "done\n";
      parser.reset();
      d.expect(mode & 2);
    }
  }
  // EOF: ends a close-delimited body, or cuts the response short.
  if (parser.headersDone() && parser.inMessage() && parser.messageNeedsEof()) {
    story += parser.finish() ? "F ok\n" : "F cut\n";
  } else {
    story += parser.inMessage() ? "F cut\n" : "F idle\n";
  }
  return story;
}

}  // namespace
}  // namespace sluice

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  fuzz::Knobs k(data, size);
  uint16_t split = k.u16();
  uint8_t mode = k.byte();
  std::string_view in = k.rest();

  std::string whole = run({in}, mode);
  size_t at = in.empty() ? 0 : split % (in.size() + 1);
  std::string two = run({in.substr(0, at), in.substr(at)}, mode);
  if (whole != two) {
    fprintf(stderr, "split at %zu changed the parse:\n--- one read\n%s\n--- two reads\n%s\n", at,
            whole.c_str(), two.c_str());
    FUZZ_CHECK(whole == two);
  }
  if ((mode & 0x80) && in.size() <= 2048) {
    std::vector<std::string_view> bytes;
    for (size_t i = 0; i < in.size(); i++) bytes.push_back(in.substr(i, 1));
    std::string each = run(bytes, mode);
    if (whole != each) {
      fprintf(stderr, "byte-by-byte reads changed the parse:\n--- one read\n%s\n--- bytes\n%s\n",
              whole.c_str(), each.c_str());
      FUZZ_CHECK(whole == each);
    }
  }
  return 0;
}
