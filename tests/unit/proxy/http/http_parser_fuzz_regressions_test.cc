// Regression tests for bugs the fuzz targets found (tests/fuzz, docs/security.md). Each test is
// named after its bug; the input that found it is kept in tests/fuzz/corpus/<target>/.
#include <catch2/catch.hpp>
#include <string>

#include "proxy/http/http_parser.h"

namespace sluice {
namespace {

// The upstream side of UpstreamConnection: interim 1xx pauses, the final response pauses.
class ResponseRecorder : public HttpParserDelegate {
 public:
  HttpParser* parser = nullptr;
  bool head_request = false;
  std::string statuses;  // "103 200 " etc.
  std::string body;
  int onMessageBegin() override { return 0; }
  int onHeadersComplete() override {
    statuses += std::to_string(parser->head().status) + " ";
    return head_request ? 1 : 0;
  }
  int onBody(const char* p, size_t n) override {
    body.append(p, n);
    return 0;
  }
  int onMessageComplete() override { return HPE_PAUSED; }
};

struct ResponseParse {
  ResponseRecorder d;
  HttpParser p{HTTP_RESPONSE, HttpParserLimits{}, &d};
  ResponseParse() { d.parser = &p; }
  // Parses every response in `s`, resuming after each; returns the last status.
  HttpParser::Status run(std::string s) {
    while (true) {
      auto r = p.execute(s.data(), s.size());
      if (r.status != HttpParser::Status::kPaused) return r.status;
      s.erase(0, r.consumed);
      p.resume();
      if (s.empty()) return HttpParser::Status::kOk;
    }
  }
};

// The client side of ClientConnection: one request at a time.
class RequestRecorder : public HttpParserDelegate {
 public:
  int completes = 0;
  int onMessageBegin() override { return 0; }
  int onHeadersComplete() override { return 0; }
  int onBody(const char*, size_t) override { return 0; }
  int onMessageComplete() override {
    completes++;
    return HPE_PAUSED;
  }
};

TEST_CASE("Regression: blank lines ahead of a request hid an obs-fold from the fold check",
          "[proxy][http][fuzz]") {
  // tests/fuzz/corpus/http_request/crash-leading-crlf-hides-obs-fold. llhttp skips CR and LF
  // before the request line, but the fold scan took "\r\n\r\n" there for the end of the head and
  // stopped looking: a folded Transfer-Encoding went through to the upstream.
  for (const char* prefix : {"\r\n\r\n", "\r\n", "\n\n", "\r\r\n\r\n", "\r"}) {
    std::string req = std::string(prefix) +
                      "POST / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n"
                      "Content-Length: 3\r\n\r\nabc";
    CAPTURE(req);
    // In one read, and with the prefix in a read of its own.
    for (size_t cut : {size_t(0), std::string(prefix).size()}) {
      RequestRecorder d;
      HttpParser p(HTTP_REQUEST, HttpParserLimits{}, &d);
      auto r = cut ? p.execute(req.data(), cut) : HttpParser::Result{HttpParser::Status::kOk, 0};
      REQUIRE(r.status == HttpParser::Status::kOk);
      r = p.execute(req.data() + cut, req.size() - cut);
      CHECK(r.status == HttpParser::Status::kError);
      CHECK(p.errorStatus() == 400);
      CHECK(p.errorReason() == "obsolete line folding in header");
      CHECK(d.completes == 0);
    }
  }
  // Leading blank lines alone are still fine (RFC 9112 2.2 lets a server ignore them).
  RequestRecorder d;
  HttpParser p(HTTP_REQUEST, HttpParserLimits{}, &d);
  std::string ok = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
  CHECK(p.execute(ok.data(), ok.size()).status == HttpParser::Status::kPaused);
  CHECK(d.completes == 1);
}

TEST_CASE("Regression: an upstream 1xx with a body desynchronised the response stream",
          "[proxy][http][fuzz]") {
  // tests/fuzz/corpus/http_response/crash-interim-1xx-with-*-body. llhttp 8 reads a body after a
  // 1xx with Content-Length or chunked; sluice then wrote those bytes to the client ahead of the
  // final head (chunked), or let Content-Length swallow the start of the final response.
  SECTION("chunked") {
    ResponseParse rp;
    auto st = rp.run(
        "HTTP/1.1 199 Odd\r\nTransfer-Encoding: chunked\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(st == HttpParser::Status::kOk);
    CHECK(rp.d.statuses == "199 200 ");
    CHECK(rp.d.body == "ok");
  }
  SECTION("content-length") {
    ResponseParse rp;
    auto st = rp.run(
        "HTTP/1.1 150 Odd\r\nContent-Length: 17\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(st == HttpParser::Status::kOk);
    CHECK(rp.d.statuses == "150 200 ");
    CHECK(rp.d.body == "ok");
  }
  SECTION("100 Continue with Content-Length") {
    ResponseParse rp;
    auto st = rp.run(
        "HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    CHECK(st == HttpParser::Status::kOk);
    CHECK(rp.d.statuses == "100 200 ");
    CHECK(rp.d.body == "ok");
  }
  SECTION("a HEAD request's 1xx") {
    ResponseParse rp;
    rp.d.head_request = true;
    CHECK(rp.run("HTTP/1.1 103 Hints\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n") == HttpParser::Status::kOk);
    CHECK(rp.d.statuses == "103 200 ");
    CHECK(rp.d.body.empty());
  }
  SECTION("a bare 103 Early Hints stays as it was") {
    ResponseParse rp;
    CHECK(rp.run("HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                 "HTTP/1.1 204 No Content\r\n\r\n") == HttpParser::Status::kOk);
    CHECK(rp.d.statuses == "103 204 ");
  }
  SECTION("a final response keeps its body") {
    ResponseParse rp;
    CHECK(rp.run("HTTP/1.1 299 Odd\r\nContent-Length: 3\r\n\r\nabc") == HttpParser::Status::kOk);
    CHECK(rp.d.body == "abc");
  }
}

TEST_CASE("Regression: an upstream status below 100 went to the client as a malformed status line",
          "[proxy][http][fuzz]") {
  // tests/fuzz/corpus/http_response/crash-status-000-forwarded. llhttp accepts any three digits;
  // "000" reached ClientConnection as a final response and went out as "HTTP/1.1 0 ...".
  for (const char* line : {"HTTP/1.1 000 Continue\r\n\r\n", "HTTP/1.1 099 X\r\nContent-Length: 0\r\n\r\n",
                           "HTTP/1.0 001 X\r\n\r\n"}) {
    CAPTURE(line);
    ResponseParse rp;
    CHECK(rp.run(line) == HttpParser::Status::kError);
    CHECK(rp.p.errorStatus() == 502);
    CHECK(rp.d.statuses.empty());  // never reaches the delegate
  }
  ResponseParse ok;
  CHECK(ok.run("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 599 Odd\r\nContent-Length: 0\r\n\r\n") ==
        HttpParser::Status::kOk);
  CHECK(ok.d.statuses == "100 599 ");
}

}  // namespace
}  // namespace sluice
