#pragma once
// One stored response of the micro-cache. Immutable once built and shared by pointer, so a
// response being written to a hundred clients on eight workers costs one copy in memory, and an
// eviction never pulls bytes from under a write in progress (the last reader frees it).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "core/clock.h"
#include "proxy/http/header_map.h"

namespace sluice::cache {

class CachedResponse;
using CachedResponsePtr = std::shared_ptr<const CachedResponse>;

class CachedResponse {
 public:
  // Builds an entry from an upstream response. Hop-by-hop fields (Connection and the fields it
  // names, Keep-Alive, Proxy-Connection, Transfer-Encoding, TE, Trailer, Upgrade) and
  // Content-Length are dropped: the proxy frames a cached body itself with Content-Length:
  // body().size(), whatever framing the upstream used. Everything else keeps wire order and case.
  // `fresh_for` and `stale_for` are durations after `stored_at` (stale_for counts from the end of
  // freshness: the max-stale window). `vary_values` is the secondary key (CacheKey::vary).
  static CachedResponsePtr make(int status, const HeaderMap& upstream_headers, std::string body,
                                Nanos stored_at, Nanos fresh_for, Nanos stale_for,
                                std::string vary_values);

  int status() const { return status_; }
  const HeaderMap& headers() const { return headers_; }
  std::string_view body() const { return body_; }
  Nanos storedAt() const { return stored_at_; }
  Nanos freshUntil() const { return fresh_until_; }  // fresh while now < freshUntil
  Nanos staleUntil() const { return stale_until_; }  // servable as stale while now < staleUntil
  std::string_view varyValues() const { return vary_values_; }
  bool hasSetCookie() const { return has_set_cookie_; }

  bool isFresh(Nanos now) const { return now < fresh_until_; }
  bool isUsable(Nanos now) const { return now < stale_until_; }
  // Whole seconds since it was stored, for the Age header the proxy adds when serving it.
  int64_t ageSeconds(Nanos now) const { return now > stored_at_ ? (now - stored_at_) / kSeconds : 0; }

  // Everything this entry holds on the heap plus itself: what the store charges against its bound.
  size_t bytes() const { return bytes_; }

  // Public for make_shared; use make().
  CachedResponse() = default;

 private:
  int status_ = 0;
  HeaderMap headers_;
  std::string body_;
  std::string vary_values_;
  Nanos stored_at_ = 0;
  Nanos fresh_until_ = 0;
  Nanos stale_until_ = 0;
  size_t bytes_ = 0;
  bool has_set_cookie_ = false;
};

}  // namespace sluice::cache
