#include "proxy/router/router.h"

#include <re2/re2.h>

#include <catch2/catch.hpp>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "proxy/config/config.h"

namespace sluice {
namespace {

RouteConfig anyRoute(std::string name) {
  RouteConfig r;
  r.name = std::move(name);
  r.path_kind = PathMatchKind::kAny;
  return r;
}

RouteConfig exactRoute(std::string name, std::string path) {
  RouteConfig r;
  r.name = std::move(name);
  r.path_kind = PathMatchKind::kExact;
  r.path = std::move(path);
  return r;
}

RouteConfig prefixRoute(std::string name, std::string path) {
  RouteConfig r;
  r.name = std::move(name);
  r.path_kind = PathMatchKind::kPrefix;
  r.path = std::move(path);
  return r;
}

RouteConfig regexRoute(std::string name, std::string pattern) {
  RouteConfig r;
  r.name = std::move(name);
  r.path_kind = PathMatchKind::kRegex;
  r.path = pattern;
  r.regex = std::make_shared<re2::RE2>(pattern);
  REQUIRE(r.regex->ok());
  return r;
}

Config withRoutes(std::vector<RouteConfig> routes) {
  Config c;
  c.routes = std::move(routes);
  return c;
}

TEST_CASE("Router exact paths match only the same path", "[proxy][router]") {
  Config c = withRoutes({exactRoute("login", "/login"), exactRoute("root", "/")});
  Router r(c);
  CHECK(r.match("a", "/login", "GET") == 0);
  CHECK(r.match("a", "/", "GET") == 1);
  CHECK(r.match("a", "/login/", "GET") == -1);
  CHECK(r.match("a", "/logi", "GET") == -1);
  CHECK(r.match("a", "/loginx", "GET") == -1);
  CHECK(r.match("a", "/LOGIN", "GET") == -1);  // paths are case-sensitive
  CHECK(r.match("a", "", "GET") == -1);
}

TEST_CASE("Router prefix paths match like nginx's plain location", "[proxy][router]") {
  Config c = withRoutes({prefixRoute("api", "/api/"), prefixRoute("static", "/static")});
  Router r(c);
  CHECK(r.match("a", "/api/", "GET") == 0);
  CHECK(r.match("a", "/api/v1/items", "GET") == 0);
  CHECK(r.match("a", "/api", "GET") == -1);  // shorter than the prefix
  CHECK(r.match("a", "/static", "GET") == 1);
  CHECK(r.match("a", "/static/app.js", "GET") == 1);
  CHECK(r.match("a", "/staticfiles", "GET") == 1);  // a plain prefix, as in nginx
  CHECK(r.match("a", "/other", "GET") == -1);
  CHECK(r.match("a", "/API/v1", "GET") == -1);
}

TEST_CASE("Router regex paths are unanchored partial matches (nginx `location ~`)",
          "[proxy][router]") {
  Config c = withRoutes({regexRoute("php", "\\.php$"), regexRoute("item", "^/item/[0-9]+$"),
                         regexRoute("word", "checkout"), regexRoute("ci", "(?i)/promo")});
  Router r(c);
  CHECK(r.match("a", "/index.php", "GET") == 0);
  CHECK(r.match("a", "/dir/x.php", "GET") == 0);
  CHECK(r.match("a", "/x.php/extra", "GET") == -1);  // $ anchors at the end
  CHECK(r.match("a", "/item/123", "GET") == 1);
  CHECK(r.match("a", "/item/123/x", "GET") == -1);
  CHECK(r.match("a", "/x/item/123", "GET") == -1);   // ^ anchors at the start
  CHECK(r.match("a", "/cart/checkout/pay", "GET") == 2);  // found anywhere
  CHECK(r.match("a", "/checkout", "GET") == 2);
  CHECK(r.match("a", "/Checkout", "GET") == -1);     // RE2 is case-sensitive by default
  CHECK(r.match("a", "/PROMO/summer", "GET") == 3);  // unless the pattern says otherwise
  CHECK(r.match("a", "/nothing", "GET") == -1);
}

TEST_CASE("Router: a regex route without a compiled regex never matches", "[proxy][router]") {
  RouteConfig broken;
  broken.path_kind = PathMatchKind::kRegex;
  broken.path = ".*";
  Config c = withRoutes({broken, anyRoute("fallback")});
  Router r(c);
  CHECK(r.match("a", "/x", "GET") == 1);
}

TEST_CASE("Router method filters", "[proxy][router]") {
  RouteConfig write = prefixRoute("write", "/cart");
  write.methods = {"POST", "PUT"};
  RouteConfig read = prefixRoute("read", "/cart");
  read.methods = {"GET", "HEAD"};
  Config c = withRoutes({write, read, anyRoute("rest")});
  Router r(c);
  CHECK(r.match("a", "/cart", "POST") == 0);
  CHECK(r.match("a", "/cart", "PUT") == 0);
  CHECK(r.match("a", "/cart", "GET") == 1);
  CHECK(r.match("a", "/cart", "HEAD") == 1);
  CHECK(r.match("a", "/cart", "DELETE") == 2);
  CHECK(r.match("a", "/cart", "post") == 2);  // methods are case-sensitive tokens
  CHECK(r.match("a", "/other", "POST") == 2);
}

TEST_CASE("Router host matching", "[proxy][router]") {
  RouteConfig exact = anyRoute("exact");
  exact.hosts = {"shop.example.com", "www.example.com"};
  RouteConfig wild = anyRoute("wild");
  wild.hosts = {"*.example.com"};
  RouteConfig v6 = anyRoute("v6");
  v6.hosts = {"[2001:db8::1]"};
  Config c = withRoutes({exact, wild, v6});
  Router r(c);

  SECTION("exact, case-insensitive, port ignored") {
    CHECK(r.match("shop.example.com", "/", "GET") == 0);
    CHECK(r.match("www.example.com", "/", "GET") == 0);
    CHECK(r.match("SHOP.Example.COM", "/", "GET") == 0);
    CHECK(r.match("shop.example.com:8443", "/", "GET") == 0);
    CHECK(r.match("Shop.Example.Com:80", "/", "GET") == 0);
  }
  SECTION("wildcard matches subdomains at any depth but not the bare domain") {
    CHECK(r.match("api.example.com", "/", "GET") == 1);
    CHECK(r.match("a.b.example.com", "/", "GET") == 1);
    CHECK(r.match("API.EXAMPLE.COM:9000", "/", "GET") == 1);
    CHECK(r.match("example.com", "/", "GET") == -1);
    CHECK(r.match("badexample.com", "/", "GET") == -1);
    CHECK(r.match("example.com.evil.net", "/", "GET") == -1);
    CHECK(r.match(".example.com", "/", "GET") == -1);
  }
  SECTION("IPv6 literal hosts keep their brackets and drop the port") {
    CHECK(r.match("[2001:db8::1]", "/", "GET") == 2);
    CHECK(r.match("[2001:db8::1]:8080", "/", "GET") == 2);
    CHECK(r.match("[2001:db8::2]:8080", "/", "GET") == -1);
  }
  SECTION("no or unknown Host matches no host-restricted route") {
    CHECK(r.match("", "/", "GET") == -1);
    CHECK(r.match("other.org", "/", "GET") == -1);
  }
}

TEST_CASE("Router: a route without hosts, or with \"*\", takes any host", "[proxy][router]") {
  RouteConfig star = exactRoute("star", "/s");
  star.hosts = {"*"};
  Config c = withRoutes({star, exactRoute("open", "/o")});
  Router r(c);
  CHECK(r.match("anything.test", "/s", "GET") == 0);
  CHECK(r.match("", "/o", "GET") == 1);
  CHECK(r.match("x:1", "/o", "GET") == 1);
}

TEST_CASE("Router: the first matching route in config order wins", "[proxy][router]") {
  SECTION("a broad route first shadows narrower ones") {
    Config c = withRoutes({prefixRoute("all", "/"), exactRoute("login", "/login"),
                           regexRoute("re", "login")});
    Router r(c);
    CHECK(r.match("a", "/login", "GET") == 0);
  }
  SECTION("narrow routes first, fallback last") {
    RouteConfig hosted = prefixRoute("hosted", "/api");
    hosted.hosts = {"api.example.com"};
    RouteConfig post = prefixRoute("post", "/api");
    post.methods = {"POST"};
    Config c = withRoutes({exactRoute("login", "/api/login"), hosted, post,
                           regexRoute("re", "^/api/"), anyRoute("fallback")});
    Router r(c);
    CHECK(r.match("x", "/api/login", "POST") == 0);
    CHECK(r.match("api.example.com", "/api/items", "POST") == 1);
    CHECK(r.match("other", "/api/items", "POST") == 2);
    CHECK(r.match("other", "/api/items", "GET") == 3);
    CHECK(r.match("other", "/", "GET") == 4);
  }
}

TEST_CASE("Router returns -1 when nothing matches", "[proxy][router]") {
  Config empty;
  CHECK(Router(empty).match("a", "/", "GET") == -1);
  RouteConfig only = exactRoute("only", "/x");
  only.methods = {"GET"};
  only.hosts = {"h"};
  Config c = withRoutes({only});
  Router r(c);
  CHECK(r.match("h", "/x", "GET") == 0);
  CHECK(r.match("h", "/x", "POST") == -1);
  CHECK(r.match("g", "/x", "GET") == -1);
  CHECK(r.match("h", "/y", "GET") == -1);
}

// ---------------------------------------------------------------------------------------------
// splitTarget

struct Split {
  std::string path;
  std::string query;
  bool operator==(const Split& o) const { return path == o.path && query == o.query; }
};

std::ostream& operator<<(std::ostream& os, const Split& s) {
  return os << "{path=\"" << s.path << "\", query=\"" << s.query << "\"}";
}

Split split(std::string_view target) {
  std::string_view p = "unset", q = "unset";
  splitTarget(target, &p, &q);
  return {std::string(p), std::string(q)};
}

TEST_CASE("splitTarget separates path and query", "[proxy][router]") {
  CHECK(split("/") == Split{"/", ""});
  CHECK(split("/a/b") == Split{"/a/b", ""});
  CHECK(split("/a/b?x=1&y=2") == Split{"/a/b", "x=1&y=2"});
  CHECK(split("/a?") == Split{"/a", ""});
  CHECK(split("/a?x=1?y=2") == Split{"/a", "x=1?y=2"});  // only the first '?' splits
  CHECK(split("/?q=/etc/passwd") == Split{"/", "q=/etc/passwd"});
  CHECK(split("*") == Split{"*", ""});                   // OPTIONS *
  CHECK(split("") == Split{"", ""});
}

TEST_CASE("splitTarget takes the path of an absolute-form target", "[proxy][router]") {
  CHECK(split("http://shop.example.com/a/b?x=1") == Split{"/a/b", "x=1"});
  CHECK(split("https://shop.example.com:8443/") == Split{"/", ""});
  CHECK(split("http://shop.example.com") == Split{"/", ""});
  CHECK(split("HTTP://Shop.Example.com/Item") == Split{"/Item", ""});
}

TEST_CASE("splitTarget: absolute-form without a path keeps its query and ignores slashes in it",
          "[proxy][router][regression]") {
  // The authority ends at the first '/' or '?'. "http://h?next=/admin" used to route as path
  // "/admin" with no query (the slash inside the query was taken for the path), and
  // "http://h?x=1" lost its query.
  CHECK(split("http://shop.example.com?x=1") == Split{"/", "x=1"});
  CHECK(split("http://shop.example.com?next=/admin/users") == Split{"/", "next=/admin/users"});
  CHECK(split("http://shop.example.com:80?a=1&b=/c") == Split{"/", "a=1&b=/c"});
}

}  // namespace
}  // namespace sluice
