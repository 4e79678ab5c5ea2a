#include "proxy/cache/cache_key.h"

#include <catch2/catch.hpp>
#include <string>

#include "core/hash.h"

namespace sluice::cache {
namespace {

CacheKey keyFor(const CacheKeySpec& spec, std::string_view host, std::string_view target,
                const HeaderMap& headers = HeaderMap()) {
  CacheKey k;
  buildCacheKey(spec, CacheRequestView{host, target, &headers}, &k);
  return k;
}

TEST_CASE("cache key: host lower-cased, path kept, query args sorted by name", "[cache]") {
  CacheKeySpec spec;
  spec.normalize();
  auto a = keyFor(spec, "Shop.Example.COM", "/items/42?b=1&a=2");
  auto b = keyFor(spec, "shop.example.com", "/items/42?a=2&b=1");
  CHECK(a.canonical == "shop.example.com/items/42?a=2&b=1");
  CHECK(a.canonical == b.canonical);
  CHECK(a.hash == b.hash);
  CHECK(a.hash == hash64(a.canonical));
  CHECK(cacheKeyHash(a.canonical) == a.hash);
  // Path case matters, and a different path is a different key.
  CHECK(keyFor(spec, "shop.example.com", "/Items/42?a=2&b=1").canonical != a.canonical);
}

TEST_CASE("cache key: repeated args keep wire order, empty segments and fragments dropped", "[cache]") {
  CacheKeySpec spec;
  spec.normalize();
  CHECK(keyFor(spec, "h", "/p?z=1&a=2&a=1&&b").canonical == "h/p?a=2&a=1&b&z=1");
  CHECK(keyFor(spec, "h", "/p?a=1#frag").canonical == "h/p?a=1");
  CHECK(keyFor(spec, "h", "/p?").canonical == "h/p");
  CHECK(keyFor(spec, "h", "/p").canonical == "h/p");
  // "a" (no value) and "a=" (empty value) are different requests to most apps.
  CHECK(keyFor(spec, "h", "/p?a").canonical != keyFor(spec, "h", "/p?a=").canonical);
}

TEST_CASE("cache key: only chosen query args, cache busters ignored", "[cache]") {
  CacheKeySpec spec;
  spec.all_query_args = false;
  spec.query_args = {"sku", "color"};
  spec.normalize();
  auto a = keyFor(spec, "h", "/p?_=1712345&sku=9&color=red");
  auto b = keyFor(spec, "h", "/p?color=red&sku=9&_=999");
  CHECK(a.canonical == "h/p?color=red&sku=9");
  CHECK(a.canonical == b.canonical);
  spec.query_args.clear();
  CHECK(keyFor(spec, "h", "/p?sku=9").canonical == "h/p");
}

TEST_CASE("cache key: host can be left out", "[cache]") {
  CacheKeySpec spec;
  spec.include_host = false;
  spec.normalize();
  CHECK(keyFor(spec, "a.example", "/p").canonical == keyFor(spec, "b.example", "/p").canonical);
}

TEST_CASE("cache key: chosen headers and cookies, sorted, absent differs from empty", "[cache]") {
  CacheKeySpec spec;
  spec.headers = {"X-Region", "Accept-Language"};
  spec.cookies = {"member"};
  spec.normalize();
  HeaderMap h;
  h.add("accept-language", "de");
  h.add("X-Region", "eu");
  h.add("Cookie", "session=abc; member=77; theme=dark");
  auto k = keyFor(spec, "h", "/p", h);
  CHECK(k.canonical == "h/p h:accept-language=de h:x-region=eu c:member=77");
  CHECK(k.all_key_cookies_present);

  HeaderMap other_session;  // same member, other unrelated cookies: same key
  other_session.add("Accept-Language", "de");
  other_session.add("x-region", "eu");
  other_session.add("Cookie", "member=77; session=zzz");
  CHECK(keyFor(spec, "h", "/p", other_session).canonical == k.canonical);

  HeaderMap none;
  auto absent = keyFor(spec, "h", "/p", none);
  CHECK(absent.canonical == "h/p h:accept-language h:x-region c:member");
  CHECK_FALSE(absent.all_key_cookies_present);
  HeaderMap empty;
  empty.add("Accept-Language", "");
  empty.add("X-Region", "");
  empty.add("Cookie", "member=");
  auto e = keyFor(spec, "h", "/p", empty);
  CHECK(e.canonical == "h/p h:accept-language= h:x-region= c:member=");
  CHECK_FALSE(e.all_key_cookies_present);
}

TEST_CASE("cache key: the whole Cookie header is never part of the key by default", "[cache]") {
  CacheKeySpec spec;
  spec.normalize();
  HeaderMap a, b;
  a.add("Cookie", "member=1; session=x");
  b.add("Cookie", "member=2; session=y");
  CHECK(keyFor(spec, "h", "/p", a).canonical == keyFor(spec, "h", "/p", b).canonical);
  CHECK(keyFor(spec, "h", "/p", a).canonical.find("member") == std::string::npos);
}

TEST_CASE("cache key: values are escaped so no value can forge a separator", "[cache]") {
  CacheKeySpec spec;
  spec.headers = {"x-a", "x-b"};
  spec.normalize();
  HeaderMap forged, real;
  forged.add("X-A", "1 h:x-b=2");
  real.add("X-A", "1");
  real.add("X-B", "2");
  auto f = keyFor(spec, "h", "/p", forged);
  auto r = keyFor(spec, "h", "/p", real);
  CHECK(f.canonical != r.canonical);
  CHECK(f.canonical == "h/p h:x-a=1%20h:x-b%3D2 h:x-b");
  // Repeated header fields are combined in order.
  HeaderMap twice;
  twice.add("x-a", "1");
  twice.add("X-A", "2");
  CHECK(keyFor(spec, "h", "/p", twice).canonical == "h/p h:x-a=1,%202 h:x-b");
}

TEST_CASE("cache key: vary headers form the secondary key, not the primary", "[cache]") {
  CacheKeySpec spec;
  spec.vary = {"Accept-Encoding"};
  spec.normalize();
  HeaderMap gz, br;
  gz.add("Accept-Encoding", "gzip");
  br.add("accept-encoding", "br");
  auto a = keyFor(spec, "h", "/p", gz);
  auto b = keyFor(spec, "h", "/p", br);
  CHECK(a.canonical == b.canonical);
  CHECK(a.vary == "accept-encoding=gzip\n");
  CHECK(b.vary == "accept-encoding=br\n");
  CHECK(keyFor(spec, "h", "/p").vary == "accept-encoding\n");
}

TEST_CASE("cache key: many query args spill past the inline buffer and still sort", "[cache]") {
  CacheKeySpec spec;
  spec.normalize();
  std::string target = "/p?";
  std::string expect = "h/p?";
  for (int i = 39; i >= 0; i--) {
    char name[8];
    snprintf(name, sizeof(name), "k%02d", i);
    target += std::string(name) + "=" + std::to_string(i) + (i ? "&" : "");
  }
  for (int i = 0; i < 40; i++) {
    char name[8];
    snprintf(name, sizeof(name), "k%02d", i);
    expect += std::string(i ? "&" : "") + name + "=" + std::to_string(i);
  }
  CHECK(keyFor(spec, "h", target).canonical == expect);
}

}  // namespace
}  // namespace sluice::cache
