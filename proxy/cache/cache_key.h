#pragma once
// CacheKey: which requests share a cached response.
//
// The primary key is a canonical string built from the parts a route chooses, plus its 64-bit
// hash (core/hash.h hash64) that picks the store shard and map slot; the string is kept so a hash
// collision can never serve one resource for another, and so the admin API can purge by prefix.
//
//   canonical = <host><path>[?<args sorted by name>][ h:<name>=<value>]...[ c:<name>=<value>]...
//   e.g.        shop.example.com/items/42?color=red&size=m h:accept-language=de c:member=77
//
// - GET and HEAD share an entry (a HEAD is answered from a GET entry without its body); no other
//   method is cacheable, so the method class is not spelled in the key.
// - host is lower-cased; the path is taken as received (no dot-segment or percent decoding: the
//   router matched that same path, and a missed normalisation costs hit ratio, never correctness).
// - query args: all of them by default, or only the chosen names; sorted by name (a stable sort,
//   so repeated names keep their wire order) so ?b=1&a=2 and ?a=2&b=1 are one entry.
// - headers / cookies: only the chosen ones, sorted by name. An absent part is spelled without
//   '=' (`c:member`), an empty one with it (`c:member=`), so "no cookie" never matches "empty".
//   The whole Cookie header is never a key part: cookie: names cookies one by one.
// - values are escaped (%XX for space, '%', '&', '=', controls and non-ASCII), so no value can
//   forge a separator and make two different requests spell the same key.
//
// Vary (the secondary key): the route's `vary` headers are not in the primary key. Their values
// are recorded with each stored response (CachedResponse::varyValues) and a lookup matches only a
// response stored under the same values. One primary key holds a few variants; purging the key
// purges them all.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/hash.h"
#include "proxy/http/header_map.h"

namespace sluice::cache {

struct CacheKeySpec {
  bool include_host = true;
  bool all_query_args = true;             // every arg, sorted; false: only query_args
  std::vector<std::string> query_args;    // names, exact case
  std::vector<std::string> headers;       // names, any case (matched case-insensitively)
  std::vector<std::string> cookies;       // cookie names, exact case
  std::vector<std::string> vary;          // header names of the secondary key

  // Lower-cases header names and sorts every list, so the builder emits parts in one order
  // whatever order the YAML listed them in. Call once when the route config is built.
  void normalize();
};

// The parts of a request the key reads. Views into the request; nothing is copied.
struct CacheRequestView {
  std::string_view host;     // Host header (or authority)
  std::string_view target;   // request-target as received: /path?query
  const HeaderMap* headers = nullptr;
};

struct CacheKey {
  std::string canonical;
  uint64_t hash = 0;          // hash64(canonical)
  std::string vary;           // secondary key: "name=value\n" per vary header, in spec order
  // Every cookie the spec names was present and non-empty. A response carrying Set-Cookie may
  // only be stored under a key that really is one member's (cache_policy.h).
  bool all_key_cookies_present = true;
};

// Builds `out` in place (reusing its string capacity: an Exchange keeps one CacheKey).
void buildCacheKey(const CacheKeySpec& spec, const CacheRequestView& request, CacheKey* out);

// The key the admin API purges: hash of a canonical string typed by an operator.
inline uint64_t cacheKeyHash(std::string_view canonical) { return hash64(canonical); }

}  // namespace sluice::cache
