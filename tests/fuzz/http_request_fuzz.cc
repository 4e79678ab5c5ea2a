// The request path from raw client bytes: HttpParser (HTTP_REQUEST, default limits) driven the
// way ClientConnection drives it (pause after each message, keep the rest, resume), then the
// identify phase's pure parts on every request head: resolveClientIp with a trusted set,
// splitTarget, Router::match over exact/prefix/regex routes, request id and traceparent checks.
//
// Input: [split lo][split hi][mode] then the bytes a client sends. The bytes are parsed twice,
// once in one read and once cut where the knobs say (and byte by byte when mode asks), and both
// runs must tell the same story: a parser whose verdict depends on how TCP segmented the stream
// is a smuggling bug (the proxy and the upstream would disagree about where a request ends).
#include <re2/re2.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/ip.h"
#include "proxy/config/config.h"
#include "proxy/http/http_parser.h"
#include "proxy/router/router.h"
#include "proxy/server/identify.h"
#include "tests/fuzz/fuzz_common.h"

namespace sluice {
namespace {

RouteConfig route(std::string name, PathMatchKind kind, std::string path,
                  std::vector<std::string> hosts = {}, std::vector<std::string> methods = {}) {
  RouteConfig r;
  r.name = std::move(name);
  r.path_kind = kind;
  r.path = std::move(path);
  r.hosts = std::move(hosts);
  r.methods = std::move(methods);
  if (kind == PathMatchKind::kRegex) {
    r.regex = std::make_shared<re2::RE2>(r.path);
    FUZZ_CHECK(r.regex->ok());
  }
  return r;
}

struct Fixture {
  Config config;
  std::unique_ptr<Router> router;
  CidrSet trusted;
  IpAddress peers[3];  // trusted v4, untrusted v4, trusted v6

  Fixture() {
    config.routes = {
        route("login", PathMatchKind::kExact, "/login", {"shop.example.com"}, {"POST"}),
        route("checkout", PathMatchKind::kPrefix, "/api/checkout", {"*.example.com"}),
        route("item", PathMatchKind::kRegex, "^/api/items/[0-9]+$", {}, {"GET", "HEAD"}),
        route("assets", PathMatchKind::kRegex, "\\.(css|js|png)$"),
        route("static", PathMatchKind::kPrefix, "/static/"),
        route("root", PathMatchKind::kExact, "/"),
        route("admin", PathMatchKind::kAny, "", {"admin.internal", "[::1]"}),
    };
    router = std::make_unique<Router>(config);
    for (const char* c : {"10.0.0.0/8", "127.0.0.1", "::1/128", "fd00::/8"}) {
      Cidr cidr;
      FUZZ_CHECK(Cidr::parse(c, &cidr));
      trusted.add(cidr);
    }
    FUZZ_CHECK(IpAddress::parse("10.1.2.3", &peers[0]));
    FUZZ_CHECK(IpAddress::parse("203.0.113.9", &peers[1]));
    FUZZ_CHECK(IpAddress::parse("::1", &peers[2]));
  }
};

const Fixture& fixture() {
  static Fixture f;
  return f;
}

// Everything the proxy would act on, written down so two runs can be compared.
class RequestDelegate : public HttpParserDelegate {
 public:
  RequestDelegate(const IpAddress& peer, std::string* story) : peer_(peer), story_(story) {}
  void attach(HttpParser* p) { parser_ = p; }

  int onMessageBegin() override { return 0; }

  int onHeadersComplete() override {
    const auto& h = parser_->head();
    const auto& fx = fixture();
    std::string& s = *story_;
    s += "H ";
    s += h.method_name;
    s += ' ';
    s += h.target;
    s += " v" + std::to_string(h.version_major) + "." + std::to_string(h.version_minor);
    s += h.keep_alive ? " ka" : "";
    s += h.chunked ? " chunked" : "";
    s += h.has_content_length ? " cl=" + std::to_string(h.content_length) : "";
    s += h.upgrade ? " upgrade" : "";
    s += '\n';
    FUZZ_CHECK(h.target.size() <= HttpParserLimits{}.max_uri_size);
    FUZZ_CHECK(h.headers.size() <= HttpParserLimits{}.max_headers);
    for (size_t i = 0; i < h.headers.size(); i++) {
      FUZZ_CHECK(!h.headers.name(i).empty());  // finishField refuses ": x"
      s += "  ";
      s += h.headers.name(i);
      s += ": ";
      s += h.headers.value(i);
      s += '\n';
    }

    // identify: the client address.
    IpAddress ip = resolveClientIp(peer_, h.headers, fx.trusted);
    if (!fx.trusted.contains(peer_)) FUZZ_CHECK(ip == peer_);  // spoofed XFF is never believed
    s += "  ip " + ip.toString() + '\n';

    // identify: route.
    std::string_view path, query;
    splitTarget(h.target, &path, &query);
    const char* tb = h.target.data();
    const char* te = tb + h.target.size();
    FUZZ_CHECK(path == "/" || (path.data() >= tb && path.data() + path.size() <= te));
    FUZZ_CHECK(query.empty() || (query.data() >= tb && query.data() + query.size() <= te));
    FUZZ_CHECK(path.find('?') == std::string_view::npos);
    std::string_view host = h.headers.getOr("host");
    int r = fx.router->match(host, path, h.method_name);
    FUZZ_CHECK(r >= -1 && r < static_cast<int>(fx.config.routes.size()));
    if (r >= 0) {
      const auto& rc = fx.config.routes[r];
      if (rc.path_kind == PathMatchKind::kExact) FUZZ_CHECK(path == rc.path);
      if (rc.path_kind == PathMatchKind::kPrefix) FUZZ_CHECK(path.substr(0, rc.path.size()) == rc.path);
      if (rc.path_kind == PathMatchKind::kRegex) FUZZ_CHECK(RE2::PartialMatch(re2::StringPiece(path.data(), path.size()), *rc.regex));
    }
    s += "  route " + std::to_string(r) + '\n';

    // identify: ids the proxy would echo and log.
    std::string_view v;
    if (h.headers.get("x-request-id", &v) && isValidRequestId(v)) {
      for (unsigned char c : v) FUZZ_CHECK(c > 0x20 && c < 0x7f && c != '"' && c != '\\');
      s += "  rid\n";
    }
    if (h.headers.get("traceparent", &v) && isValidTraceparent(v)) {
      FUZZ_CHECK(v.size() >= 55);
      s += "  tp\n";
    }
    return 0;
  }

  int onBody(const char* p, size_t n) override {
    // Concatenated, so how llhttp cut the body into spans does not matter.
    if (!in_body_) *story_ += "B ";
    in_body_ = true;
    story_->append(p, n);
    return 0;
  }

  int onMessageComplete() override {
    in_body_ = false;
    *story_ += "\nE\n";
    // As ClientConnection: one request at a time; an upgrade continues as a tunnel.
    return parser_->head().upgrade ? 0 : HPE_PAUSED;
  }

 private:
  IpAddress peer_;
  std::string* story_;
  HttpParser* parser_ = nullptr;
  bool in_body_ = false;
};

// Feeds `chunks` (the reads a client connection sees) and returns the story.
std::string run(const std::vector<std::string_view>& chunks, const IpAddress& peer) {
  std::string story;
  RequestDelegate d(peer, &story);
  HttpParser parser(HTTP_REQUEST, HttpParserLimits{}, &d);
  d.attach(&parser);
  std::string pending;
  size_t total = 0, messages = 0;
  for (std::string_view chunk : chunks) total += chunk.size();
  for (std::string_view chunk : chunks) {
    pending.append(chunk);
    while (!pending.empty()) {
      std::string data;
      data.swap(pending);
      auto r = parser.execute(data.data(), data.size());
      switch (r.status) {
        case HttpParser::Status::kOk:
          FUZZ_CHECK(r.consumed == data.size());
          break;
        case HttpParser::Status::kPaused:
          // The response is "done" at once: resume with what was pipelined behind.
          FUZZ_CHECK(r.consumed <= data.size());
          FUZZ_CHECK(!parser.inMessage());
          pending.assign(data, r.consumed);
          parser.resume();
          // Each message costs at least its request line, so this loop ends.
          FUZZ_CHECK(++messages <= total);
          break;
        case HttpParser::Status::kUpgrade:
          FUZZ_CHECK(r.consumed <= data.size());
          story += "U\n";
          return story;
        case HttpParser::Status::kError:
          // Every error maps to a status the proxy can send.
          FUZZ_CHECK(parser.errorStatus() >= 400 && parser.errorStatus() <= 599);
          FUZZ_CHECK(!parser.errorReason().empty());
          story += "X\n";
          return story;
      }
    }
  }
  story += parser.finish() ? "F ok\n" : "F cut\n";
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
  const IpAddress& peer = fixture().peers[mode % 3];

  std::string whole = run({in}, peer);
  size_t at = in.empty() ? 0 : split % (in.size() + 1);
  std::string two = run({in.substr(0, at), in.substr(at)}, peer);
  if (whole != two) {
    fprintf(stderr, "split at %zu changed the parse:\n--- one read\n%s\n--- two reads\n%s\n", at,
            whole.c_str(), two.c_str());
    FUZZ_CHECK(whole == two);
  }
  if ((mode & 0x80) && in.size() <= 2048) {
    std::vector<std::string_view> bytes;
    for (size_t i = 0; i < in.size(); i++) bytes.push_back(in.substr(i, 1));
    std::string each = run(bytes, peer);
    if (whole != each) {
      fprintf(stderr, "byte-by-byte reads changed the parse:\n--- one read\n%s\n--- bytes\n%s\n",
              whole.c_str(), each.c_str());
      FUZZ_CHECK(whole == each);
    }
  }
  return 0;
}
