#include "proxy/cache/cache_policy.h"

#include <catch2/catch.hpp>
#include <string>

namespace sluice::cache {
namespace {

struct Fixture {
  CachePolicy policy;
  CacheKeySpec spec;
  CacheKey key;
  HeaderMap request;
  RequestDecision cacheable() { return classifyRequest(policy, "GET", request); }
  StoreDecision decide(int status, const HeaderMap& response, size_t body = 10) {
    spec.normalize();
    buildCacheKey(spec, CacheRequestView{"h", "/p", &request}, &key);
    return decideStore(policy, spec, key, cacheable(), status, response, body);
  }
};

TEST_CASE("cache policy: GET is cacheable, HEAD lookup-only, other methods bypass", "[cache]") {
  CachePolicy p;
  HeaderMap h;
  CHECK(classifyRequest(p, "GET", h).cacheability == RequestCacheability::kCacheable);
  auto head = classifyRequest(p, "HEAD", h);
  CHECK(head.cacheability == RequestCacheability::kLookupOnly);
  CHECK(head.head);
  for (const char* m : {"POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"}) {
    CHECK(classifyRequest(p, m, h).cacheability == RequestCacheability::kBypass);
  }
}

TEST_CASE("cache policy: Authorization bypasses unless allowed and keyed", "[cache]") {
  CachePolicy p;
  CacheKeySpec spec;
  HeaderMap h;
  h.add("Authorization", "Bearer x");
  auto d = classifyRequest(p, "GET", h);
  CHECK(d.cacheability == RequestCacheability::kBypass);
  CHECK(std::string(d.reason) == "authorization");
  p.allow_authorization = true;
  CHECK(classifyRequest(p, "GET", h).cacheability == RequestCacheability::kCacheable);
  CHECK(validateCachePolicy(p, spec) != nullptr);  // would share across credentials
  spec.headers = {"Authorization"};
  spec.normalize();
  CHECK(validateCachePolicy(p, spec) == nullptr);
}

TEST_CASE("cache policy: request no-store is lookup-only and never stores", "[cache]") {
  Fixture f;
  f.request.add("Cache-Control", "no-store");
  CHECK(f.cacheable().cacheability == RequestCacheability::kLookupOnly);
  HeaderMap resp;
  auto d = f.decide(200, resp);
  CHECK_FALSE(d.store);
  CHECK(std::string(d.reason) == "request_no_store");
}

TEST_CASE("cache policy: client no-cache / max-age=0 do not bypass the shield", "[cache]") {
  Fixture f;
  f.request.add("Cache-Control", "no-cache, max-age=0");
  f.request.add("Pragma", "no-cache");
  CHECK(f.cacheable().cacheability == RequestCacheability::kCacheable);
}

TEST_CASE("cache policy: default statuses", "[cache]") {
  Fixture f;
  HeaderMap resp;
  for (int s : {200, 203, 204, 301, 404, 410}) CHECK(f.decide(s, resp).store);
  for (int s : {201, 206, 302, 304, 307, 403, 429, 500, 502, 503, 504}) {
    auto d = f.decide(s, resp);
    CHECK_FALSE(d.store);
    CHECK(std::string(d.reason) == "status");
  }
  f.policy.statuses.reset();
  f.policy.statuses.set(302);
  CHECK(f.decide(302, resp).store);
  CHECK_FALSE(f.decide(200, resp).store);
  CHECK_FALSE(f.policy.statusCacheable(-1));
  CHECK_FALSE(f.policy.statusCacheable(600));
}

TEST_CASE("cache policy: no-store, private, no-cache are never stored", "[cache]") {
  Fixture f;
  struct Case {
    const char* cc;
    const char* reason;
  } cases[] = {{"no-store", "no_store"},
               {"public, max-age=60, No-Store", "no_store"},
               {"private", "private"},
               {"private=\"set-cookie, x-user\", max-age=5", "private"},
               {"no-cache", "no_cache"},
               {"no-cache=\"set-cookie\"", "no_cache"}};
  for (const auto& c : cases) {
    HeaderMap resp;
    resp.add("Cache-Control", c.cc);
    auto d = f.decide(200, resp);
    INFO(c.cc);
    CHECK_FALSE(d.store);
    CHECK(std::string(d.reason) == c.reason);
  }
  // Split across two fields.
  HeaderMap split;
  split.add("Cache-Control", "max-age=5");
  split.add("cache-control", "private");
  CHECK_FALSE(f.decide(200, split).store);
}

TEST_CASE("cache policy: max-age and s-maxage only shorten the route TTL", "[cache]") {
  Fixture f;
  f.policy.ttl = 10 * kSeconds;
  f.policy.max_stale = 30 * kSeconds;
  HeaderMap none;
  CHECK(f.decide(200, none).fresh_for == 10 * kSeconds);
  CHECK(f.decide(200, none).stale_for == 30 * kSeconds);

  HeaderMap shorter;
  shorter.add("Cache-Control", "public, max-age=3");
  CHECK(f.decide(200, shorter).fresh_for == 3 * kSeconds);

  HeaderMap longer;
  longer.add("Cache-Control", "max-age=3600");
  CHECK(f.decide(200, longer).fresh_for == 10 * kSeconds);  // the operator's TTL is the ceiling

  HeaderMap shared;  // s-maxage wins over max-age for a shared cache, in both directions
  shared.add("Cache-Control", "max-age=1, s-maxage=4");
  CHECK(f.decide(200, shared).fresh_for == 4 * kSeconds);
  HeaderMap shared2;
  shared2.add("Cache-Control", "s-maxage=2, max-age=9");
  CHECK(f.decide(200, shared2).fresh_for == 2 * kSeconds);

  HeaderMap zero;
  zero.add("Cache-Control", "max-age=0");
  auto d = f.decide(200, zero);
  CHECK_FALSE(d.store);
  CHECK(std::string(d.reason) == "max_age_zero");

  HeaderMap garbage;  // unparsable delta-seconds counts as 0 (stale), never as "forever"
  garbage.add("Cache-Control", "max-age=abc");
  CHECK_FALSE(f.decide(200, garbage).store);
  HeaderMap quoted;
  quoted.add("Cache-Control", "max-age=\"2\"");
  CHECK(f.decide(200, quoted).fresh_for == 2 * kSeconds);
  HeaderMap huge;
  huge.add("Cache-Control", "max-age=99999999999999999999999");
  CHECK(f.decide(200, huge).fresh_for == 10 * kSeconds);
  HeaderMap dup;  // conflicting duplicates: the shorter one
  dup.add("Cache-Control", "max-age=8, max-age=2");
  CHECK(f.decide(200, dup).fresh_for == 2 * kSeconds);

  f.policy.honor_origin_cache_control = false;
  CHECK(f.decide(200, shorter).fresh_for == 10 * kSeconds);
  CHECK(f.decide(200, zero).store);  // max-age ignored entirely
}

TEST_CASE("cache policy: must-revalidate closes the stale window", "[cache]") {
  Fixture f;
  f.policy.max_stale = 30 * kSeconds;
  for (const char* cc : {"must-revalidate", "proxy-revalidate, max-age=5"}) {
    HeaderMap resp;
    resp.add("Cache-Control", cc);
    auto d = f.decide(200, resp);
    CHECK(d.store);
    CHECK(d.stale_for == 0);
  }
}

TEST_CASE("cache policy: Vary * never cached, Vary on unkeyed headers not cached", "[cache]") {
  Fixture f;
  HeaderMap star;
  star.add("Vary", "Accept-Encoding, *");
  CHECK(std::string(f.decide(200, star).reason) == "vary_star");

  HeaderMap enc;
  enc.add("Vary", "Accept-Encoding");
  CHECK(std::string(f.decide(200, enc).reason) == "vary_unkeyed");
  HeaderMap cookie;  // Vary: Cookie means "per whole cookie": never shared
  cookie.add("Vary", "Cookie");
  CHECK_FALSE(f.decide(200, cookie).store);

  f.spec.vary = {"accept-encoding"};
  CHECK(f.decide(200, enc).store);
  f.spec.vary.clear();
  f.spec.headers = {"Accept-Encoding"};  // in the primary key is just as good
  CHECK(f.decide(200, enc).store);
}

TEST_CASE("cache policy: Set-Cookie not stored unless allowed under a complete member key", "[cache]") {
  Fixture f;
  HeaderMap resp;
  resp.add("Set-Cookie", "session=abc; HttpOnly");
  f.request.add("Cookie", "member=77");
  CHECK(std::string(f.decide(200, resp).reason) == "set_cookie");

  f.policy.allow_set_cookie = true;
  CHECK(validateCachePolicy(f.policy, f.spec) != nullptr);  // no member cookie in the key
  CHECK_FALSE(f.decide(200, resp).store);

  f.spec.cookies = {"member"};
  CHECK(validateCachePolicy(f.policy, f.spec) == nullptr);
  CHECK(f.decide(200, resp).store);

  // A cookie-less request shares the anonymous entry: its Set-Cookie must never be stored.
  f.request.clear();
  CHECK(std::string(f.decide(200, resp).reason) == "set_cookie");
  f.request.add("Cookie", "member=");
  CHECK_FALSE(f.decide(200, resp).store);
}

TEST_CASE("cache policy: body size cap", "[cache]") {
  Fixture f;
  f.policy.max_entry_bytes = 1000;
  HeaderMap resp;
  CHECK(f.decide(200, resp, 1000).store);
  CHECK(std::string(f.decide(200, resp, 1001).reason) == "too_large");
  CHECK(bodyMayFit(f.policy, -1));
  CHECK(bodyMayFit(f.policy, 1000));
  CHECK_FALSE(bodyMayFit(f.policy, 1001));
}

TEST_CASE("cache policy: validation", "[cache]") {
  CachePolicy p;
  CacheKeySpec spec;
  CHECK(validateCachePolicy(p, spec) == nullptr);
  p.ttl = 0;
  CHECK(validateCachePolicy(p, spec) != nullptr);
  p.ttl = kSeconds;
  p.statuses.reset();
  CHECK(validateCachePolicy(p, spec) != nullptr);
}

}  // namespace
}  // namespace sluice::cache
