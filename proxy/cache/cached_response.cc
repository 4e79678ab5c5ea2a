#include "proxy/cache/cached_response.h"

#include <vector>

#include "core/strings.h"

namespace sluice::cache {
namespace {

// Fields that describe one connection or one framing, never the resource (RFC 9110 7.6.1).
constexpr std::string_view kHopByHop[] = {"connection",        "keep-alive", "proxy-connection",
                                          "transfer-encoding", "te",         "trailer",
                                          "upgrade",           "content-length"};

bool isHopByHop(std::string_view name, const std::vector<std::string_view>& nominated) {
  for (auto h : kHopByHop)
    if (equalsIgnoreCase(name, h)) return true;
  for (auto n : nominated)
    if (equalsIgnoreCase(name, n)) return true;
  return false;
}

// What a HeaderMap field costs beyond its bytes (offsets + flag); the exact struct is private.
constexpr size_t kFieldOverhead = 20;

}  // namespace

CachedResponsePtr CachedResponse::make(int status, const HeaderMap& upstream_headers, std::string body,
                                       Nanos stored_at, Nanos fresh_for, Nanos stale_for,
                                       std::string vary_values) {
  // Connection: close, x-foo -> x-foo is hop-by-hop too.
  std::vector<std::string_view> nominated;
  for (size_t i = 0; i < upstream_headers.size(); i++) {
    if (upstream_headers.removed(i) || !equalsIgnoreCase(upstream_headers.name(i), "connection")) continue;
    std::string_view v = upstream_headers.value(i);
    while (!v.empty()) {
      size_t comma = v.find(',');
      std::string_view tok = trim(v.substr(0, comma));
      if (!tok.empty()) nominated.push_back(tok);
      if (comma == std::string_view::npos) break;
      v.remove_prefix(comma + 1);
    }
  }

  auto r = std::make_shared<CachedResponse>();
  r->status_ = status;
  for (size_t i = 0; i < upstream_headers.size(); i++) {
    if (upstream_headers.removed(i)) continue;
    std::string_view name = upstream_headers.name(i);
    if (isHopByHop(name, nominated)) continue;
    if (equalsIgnoreCase(name, "set-cookie")) r->has_set_cookie_ = true;
    r->headers_.add(name, upstream_headers.value(i));
  }
  body.shrink_to_fit();
  r->body_ = std::move(body);
  r->vary_values_ = std::move(vary_values);
  r->stored_at_ = stored_at;
  r->fresh_until_ = stored_at + (fresh_for > 0 ? fresh_for : 0);
  r->stale_until_ = r->fresh_until_ + (stale_for > 0 ? stale_for : 0);
  r->bytes_ = sizeof(CachedResponse) + r->headers_.bytes() + r->headers_.size() * kFieldOverhead +
              r->body_.capacity() + r->vary_values_.capacity();
  return r;
}

}  // namespace sluice::cache
