#include "proxy/upstream/balance_key.h"

#include <catch2/catch.hpp>
#include <string>

#include "core/hash.h"
#include "core/ip.h"
#include "core/strings.h"
#include "proxy/http/header_map.h"

namespace sluice {
namespace {

IpAddress ip(const char* text) {
  IpAddress a;
  REQUIRE(IpAddress::parse(text, &a));
  return a;
}

// The cookie's value, "<absent>" when findCookie says there is none.
std::string cookie(const HeaderMap& h, std::string_view name) {
  std::string_view v;
  return findCookie(h, name, &v) ? std::string(v) : std::string("<absent>");
}

std::string arg(std::string_view query, std::string_view name) {
  std::string_view v;
  return findQueryArg(query, name, &v) ? std::string(v) : std::string("<absent>");
}

TEST_CASE("findCookie finds a cookie among several", "[proxy][upstream][balance_key]") {
  HeaderMap h;
  h.add("Cookie", "a=1; sid=abc123; theme=dark");
  CHECK(cookie(h, "a") == "1");
  CHECK(cookie(h, "sid") == "abc123");
  CHECK(cookie(h, "theme") == "dark");
  CHECK(cookie(h, "missing") == "<absent>");
}

TEST_CASE("findCookie tolerates spacing", "[proxy][upstream][balance_key]") {
  HeaderMap h;
  h.add("Cookie", "  a=1;b=2 ;   c = 3 ;\td=4\t");
  CHECK(cookie(h, "a") == "1");
  CHECK(cookie(h, "b") == "2");
  CHECK(cookie(h, "c") == "3");
  CHECK(cookie(h, "d") == "4");
}

TEST_CASE("findCookie matches whole names only, case-sensitively",
          "[proxy][upstream][balance_key]") {
  HeaderMap h;
  h.add("Cookie", "xsid=evil; sidx=evil2; SID=upper; sid=right");
  CHECK(cookie(h, "sid") == "right");
  CHECK(cookie(h, "SID") == "upper");
  CHECK(cookie(h, "si") == "<absent>");
  CHECK(cookie(h, "") == "<absent>");
}

TEST_CASE("findCookie reads every Cookie header, in order", "[proxy][upstream][balance_key]") {
  HeaderMap h;
  h.add("Cookie", "a=1");
  h.add("Host", "x");
  h.add("cookie", "sid=second");
  h.add("COOKIE", "sid=third; z=26");
  CHECK(cookie(h, "a") == "1");
  CHECK(cookie(h, "sid") == "second");  // the first occurrence wins
  CHECK(cookie(h, "z") == "26");
  h.remove(2);
  CHECK(cookie(h, "sid") == "third");  // removed headers are not read
}

TEST_CASE("findCookie agrees with the substring-and-trim reference on random headers",
          "[proxy][upstream][balance_key]") {
  // The parser as first written: split at ';', trim, split at the first '=', trim both halves.
  auto reference = [](std::string_view v, std::string_view name, std::string_view* out) {
    while (!v.empty()) {
      size_t semi = v.find(';');
      std::string_view pair = trim(v.substr(0, semi));
      size_t eq = pair.find('=');
      if (eq != std::string_view::npos && trim(pair.substr(0, eq)) == name) {
        *out = trim(pair.substr(eq + 1));
        return true;
      }
      if (semi == std::string_view::npos) break;
      v.remove_prefix(semi + 1);
    }
    return false;
  };
  uint64_t seed = 11;
  auto next = [&] { return seed = seed * 6364136223846793005ULL + 1442695040888963407ULL; };
  const char pool[] = "ab=;; \t=a=";
  const std::string_view names[] = {"a", "b", "ab", "", "ba", "a ", "a\tb", "a=b", "=", "a;b", " a"};
  for (int round = 0; round < 30000; round++) {
    std::string v;
    const size_t len = next() % 24;
    for (size_t k = 0; k < len; k++) v.push_back(pool[(next() >> 33) % (sizeof pool - 1)]);
    HeaderMap h;
    h.add("Cookie", v);
    for (std::string_view name : names) {
      std::string_view got, want;
      const bool found = findCookie(h, name, &got);
      REQUIRE(found == reference(v, name, &want));
      if (found) REQUIRE(got == want);
    }
  }
}

TEST_CASE("findCookie edge shapes", "[proxy][upstream][balance_key]") {
  SECTION("no Cookie header") {
    HeaderMap h;
    h.add("Set-Cookie", "sid=1");  // a response header, not a request cookie
    h.add("X-Cookie", "sid=2");
    CHECK(cookie(h, "sid") == "<absent>");
  }
  SECTION("empty value and pieces without '='") {
    HeaderMap h;
    h.add("Cookie", "flag; empty=; ;sid=1");
    CHECK(cookie(h, "empty") == "");
    CHECK(cookie(h, "flag") == "<absent>");
    CHECK(cookie(h, "sid") == "1");
  }
  SECTION("a value holding '='") {
    HeaderMap h;
    h.add("Cookie", "tok=YWJj==; b=2");
    CHECK(cookie(h, "tok") == "YWJj==");
  }
  SECTION("an empty Cookie header") {
    HeaderMap h;
    h.add("Cookie", "");
    CHECK(cookie(h, "a") == "<absent>");
  }
}

TEST_CASE("findQueryArg", "[proxy][upstream][balance_key]") {
  CHECK(arg("a=1&b=2&c=3", "a") == "1");
  CHECK(arg("a=1&b=2&c=3", "b") == "2");
  CHECK(arg("a=1&b=2&c=3", "c") == "3");
  CHECK(arg("a=1&b=2", "d") == "<absent>");
  CHECK(arg("", "a") == "<absent>");
  CHECK(arg("ab=1&a=2", "a") == "2");    // whole names only
  CHECK(arg("a=1&a=2", "a") == "1");     // first wins
  CHECK(arg("flag&x=1", "flag") == "");  // present without a value
  CHECK(arg("a=&x=1", "a") == "");
  CHECK(arg("&&a=1&", "a") == "1");
  CHECK(arg("q=a%20b+c", "q") == "a%20b+c");  // raw, not decoded
  CHECK(arg("k=v=w", "k") == "v=w");
  CHECK(arg("A=1", "a") == "<absent>");  // case-sensitive
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("balanceKeyHash hashes the configured part of the request",
          "[proxy][upstream][balance_key]") {
  HeaderMap h;
  h.add("Host", "shop");
  h.add("X-Member", "m-42");
  h.add("Cookie", "theme=dark; sid=abc");
  IpAddress client = ip("192.0.2.1");

  SECTION("client_ip") {
    uint64_t a = balanceKeyHash("client_ip", client, "/x", h);
    CHECK(a == balanceKeyHash("client_ip", ip("192.0.2.1"), "/other?q=1", HeaderMap{}));
    CHECK(a != balanceKeyHash("client_ip", ip("192.0.2.2"), "/x", h));
    // IPv4 and its mapped IPv6 form are one client.
    CHECK(a == balanceKeyHash("client_ip", ip("::ffff:192.0.2.1"), "/x", h));
    CHECK(balanceKeyHash("client_ip", ip("2001:db8::1"), "/", h) !=
          balanceKeyHash("client_ip", ip("2001:db8::2"), "/", h));
  }
  SECTION("uri includes the query, path does not") {
    CHECK(balanceKeyHash("uri", client, "/item/7?a=1", h) == hash64("/item/7?a=1"));
    CHECK(balanceKeyHash("uri", client, "/item/7?a=1", h) !=
          balanceKeyHash("uri", client, "/item/7?a=2", h));
    CHECK(balanceKeyHash("path", client, "/item/7?a=1", h) == hash64("/item/7"));
    CHECK(balanceKeyHash("path", client, "/item/7?a=1", h) ==
          balanceKeyHash("path", client, "/item/7?a=2", h));
    CHECK(balanceKeyHash("path", client, "http://shop/item/7?a=1", h) == hash64("/item/7"));
  }
  SECTION("header:NAME, case-insensitive name") {
    CHECK(balanceKeyHash("header:X-Member", client, "/", h) == hash64("m-42"));
    CHECK(balanceKeyHash("header:x-member", client, "/", h) == hash64("m-42"));
    CHECK(balanceKeyHash("header:X-Missing", client, "/", h) == hash64(""));
  }
  SECTION("cookie:NAME") {
    CHECK(balanceKeyHash("cookie:sid", client, "/", h) == hash64("abc"));
    HeaderMap other;
    other.add("Cookie", "sid=abc; cart=9");  // other cookies and order do not matter
    CHECK(balanceKeyHash("cookie:sid", ip("203.0.113.5"), "/p", other) == hash64("abc"));
    CHECK(balanceKeyHash("cookie:nope", client, "/", h) == hash64(""));
  }
  SECTION("query:NAME") {
    CHECK(balanceKeyHash("query:item", client, "/p?x=1&item=77", h) == hash64("77"));
    CHECK(balanceKeyHash("query:item", client, "/q?item=77", h) == hash64("77"));
    CHECK(balanceKeyHash("query:item", client, "/p?x=1", h) == hash64(""));
    CHECK(balanceKeyHash("query:item", client, "/p", h) == hash64(""));
  }
  SECTION("a missing key shares one server: all missing forms hash alike") {
    uint64_t empty = hash64("");
    CHECK(balanceKeyHash("header:X-None", client, "/", h) == empty);
    CHECK(balanceKeyHash("cookie:none", client, "/", h) == empty);
    CHECK(balanceKeyHash("query:none", client, "/", h) == empty);
  }
  SECTION("the same inputs give the same hash") {
    for (const char* key :
         {"client_ip", "uri", "path", "header:X-Member", "cookie:sid", "query:a"}) {
      CAPTURE(key);
      CHECK(balanceKeyHash(key, client, "/a?a=1", h) == balanceKeyHash(key, client, "/a?a=1", h));
    }
  }
}

}  // namespace
}  // namespace sluice
