#pragma once
// Cacheability policy: pure functions of a route's cache settings and one request/response.
// Nothing here reads a clock or touches the store, so every rule is a unit test.
//
// A request may be answered from the cache when it is a GET or HEAD without Authorization (unless
// the route allows it and keys on it). Only a GET leads a fill and stores: a HEAD gets no body
// upstream, so it can be answered from an entry or a GET in flight but never creates one.
//
// A response is stored only when ALL of these hold (reason names in parentheses, for the
// access log and the X-Cache debug header):
//   - its status is in the route's set: default 200, 203, 204, 301, 404, 410 (status)
//   - no Cache-Control no-store (no_store), private (private) or no-cache (no_cache: we never
//     revalidate, so "revalidate every time" means "do not reuse")
//   - the request said no no-store (request_no_store)
//   - no Set-Cookie, unless the route sets allow_set_cookie AND its key names cookies AND every
//     one of them was present in the request (set_cookie). So a Set-Cookie response is only ever
//     stored under one member's key, and a cookie-less request (which shares the anonymous
//     entry) can never plant its session cookie in front of other shoppers.
//   - no Vary: * (vary_star), and every header its Vary names is one the route keys or varies on
//     (vary_unkeyed): otherwise we would serve one variant for all
//   - the body is at most max_entry_bytes (too_large)
//   - the freshness left is > 0 (max_age_zero)
// Freshness = min(route ttl, s-maxage, else max-age): the origin can only SHORTEN the operator's
// TTL, never extend it; Expires is not read. `must-revalidate` / `proxy-revalidate` zero the
// max-stale window (the origin forbade serving it stale, even during an outage).
//
// Client Cache-Control (no-cache, max-age=0, Pragma) is ignored on lookups on purpose: at a
// flash sale it would let any client bypass the shield the cache exists to be.
#include <bitset>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/clock.h"
#include "proxy/cache/cache_key.h"
#include "proxy/http/header_map.h"

namespace sluice::cache {

struct CachePolicy {
  Nanos ttl = 1 * kSeconds;             // the ceiling of freshness
  Nanos max_stale = 0;                  // after ttl, servable while refreshing / on upstream error
  std::bitset<600> statuses;            // cacheable statuses; see setDefaultStatuses()
  size_t max_entry_bytes = 1 << 20;     // body cap per entry
  bool allow_set_cookie = false;        // see above: only under complete member-cookie keys
  bool allow_authorization = false;     // needs `authorization` among the key headers
  bool honor_origin_cache_control = true;  // false: ignore max-age/s-maxage (no-store etc. still hold)

  CachePolicy() { setDefaultStatuses(); }
  void setDefaultStatuses() {
    statuses.reset();
    for (int s : {200, 203, 204, 301, 404, 410}) statuses.set(s);
  }
  bool statusCacheable(int status) const { return status >= 0 && status < 600 && statuses.test(status); }
};

// nullptr when the settings are coherent, else why not (config loader reports it with file:line).
const char* validateCachePolicy(const CachePolicy& policy, const CacheKeySpec& spec);

enum class RequestCacheability : uint8_t {
  kBypass,      // never touches the cache (method, Authorization)
  kLookupOnly,  // may be answered by an entry or a GET in flight; never leads, never stores (HEAD,
                // request Cache-Control: no-store)
  kCacheable,   // lookup; on a miss lead or wait; may store
};

struct RequestDecision {
  RequestCacheability cacheability = RequestCacheability::kBypass;
  const char* reason = "";  // for kBypass / kLookupOnly: method, authorization, head, request_no_store
  bool head = false;        // answer without a body
};

RequestDecision classifyRequest(const CachePolicy& policy, std::string_view method, const HeaderMap& headers);

struct CacheControl {
  bool no_store = false;
  bool no_cache = false;
  bool is_private = false;
  bool is_public = false;
  bool must_revalidate = false;  // must-revalidate or proxy-revalidate
  int64_t max_age = -1;          // seconds, -1 = absent; an unparsable value counts as 0
  int64_t s_maxage = -1;
};
// Every Cache-Control field, directives case-insensitive, quoted values allowed.
CacheControl parseCacheControl(const HeaderMap& headers);

struct StoreDecision {
  bool store = false;
  const char* reason = "";  // why not (see the list above); "" when stored
  Nanos fresh_for = 0;
  Nanos stale_for = 0;
};

// Decides whether the upstream's answer to a kCacheable request is stored, and for how long.
// `body_bytes` is the full body's size (the proxy buffers at most max_entry_bytes + 1 to know).
StoreDecision decideStore(const CachePolicy& policy, const CacheKeySpec& spec, const CacheKey& key,
                          const RequestDecision& request, int status, const HeaderMap& response_headers,
                          size_t body_bytes);

// Early answer from Content-Length (before buffering): false when the body can never fit.
inline bool bodyMayFit(const CachePolicy& policy, int64_t content_length) {
  return content_length < 0 || static_cast<uint64_t>(content_length) <= policy.max_entry_bytes;
}

}  // namespace sluice::cache
