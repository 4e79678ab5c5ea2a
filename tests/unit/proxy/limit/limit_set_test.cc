// proxy/limit/limit_set: the key of each rule kind for a request (LimitSet::keyFor), the
// User-Agent normalisation, and rule state carried across a reload (a LimitSet built with the
// previous one).
#include <re2/re2.h>

#include <catch2/catch.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/hash.h"
#include "core/ip.h"
#include "proxy/config/config_loader.h"
#include "proxy/http/header_map.h"
#include "proxy/limit/limit_set.h"

namespace sluice {
namespace {

std::string joinErrors(const std::vector<ConfigError>& errors) {
  std::string out;
  for (const auto& e : errors) out += e.format() + "\n";
  return out;
}

// A config with these rules (YAML list items, indented under `rules:`) and no routes using them.
ConfigPtr configWith(const std::string& rules) {
  std::string y =
      "listeners: [{address: 127.0.0.1:8080}]\n"
      "upstreams:\n  app:\n    servers: [{address: 127.0.0.1:9080}]\n"
      "limits:\n  rules:\n" +
      rules + "routes:\n  - name: api\n    upstream: app\n";
  ConfigLoadResult r = loadConfigString(y, "test.yaml");
  INFO(joinErrors(r.errors));
  REQUIRE(r.ok());
  return r.config;
}

// One rule from a one-rule config; the config stays alive with the returned pointer.
struct OneRule {
  ConfigPtr config;
  const LimitRuleConfig& rule() const { return config->limit_rules.at(0); }
};

OneRule rule(const std::string& fields) {
  return OneRule{configWith("    - {id: r, " + fields + "}\n")};
}

// A request as the limit phase sees it.
struct Req {
  IpAddress ip;
  std::string route = "api";
  std::string target = "/";
  HeaderMap headers;
  std::vector<std::pair<std::string, std::string>> lua_keys;

  explicit Req(const char* addr = "192.0.2.1") { REQUIRE(IpAddress::parse(addr, &ip)); }
  Req& header(std::string_view n, std::string_view v) {
    headers.add(n, v);
    return *this;
  }
  Req& path(std::string t) {
    target = std::move(t);
    return *this;
  }
  Req& on(std::string r) {
    route = std::move(r);
    return *this;
  }
  Req& luaKey(std::string n, std::string v) {
    lua_keys.emplace_back(std::move(n), std::move(v));
    return *this;
  }
  LimitRequestView view() const {
    LimitRequestView v{&ip, route, target, &headers};
    v.lua_keys = &lua_keys;
    return v;
  }
};

// The key, or 0 when the rule skips the request (tests below check that real keys are not 0).
uint64_t keyOf(const OneRule& r, const Req& req) {
  uint64_t k = 0;
  if (!LimitSet::keyFor(r.rule(), req.view(), &k)) return 0;
  REQUIRE(k != 0);
  return k;
}

TEST_CASE("keyFor ip: one key per IPv4 address", "[limit]") {
  auto r = rule("key: ip, rate: 1r/s");
  CHECK(keyOf(r, Req("192.0.2.1")) == keyOf(r, Req("192.0.2.1")));
  CHECK(keyOf(r, Req("192.0.2.1")) != keyOf(r, Req("192.0.2.2")));
  CHECK(keyOf(r, Req("192.0.2.1")) != keyOf(r, Req("198.51.100.1")));
  // Headers, path and route play no part.
  CHECK(keyOf(r, Req("192.0.2.1").header("User-Agent", "a").path("/x").on("other")) ==
        keyOf(r, Req("192.0.2.1")));
  // The IPv6 prefix never groups IPv4 addresses (they are stored IPv4-mapped).
  auto wide = rule("key: ip, rate: 1r/s, ipv6_prefix: 8");
  CHECK(keyOf(wide, Req("192.0.2.1")) != keyOf(wide, Req("192.0.2.2")));
  CHECK(keyOf(wide, Req("192.0.2.1")) == keyOf(r, Req("192.0.2.1")));
}

TEST_CASE("keyFor ip: IPv6 clients are grouped by their /64 by default", "[limit]") {
  auto r = rule("key: ip, rate: 1r/s");
  CHECK(keyOf(r, Req("2001:db8:1:2::1")) == keyOf(r, Req("2001:db8:1:2:ffff:ffff:ffff:ffff")));
  CHECK(keyOf(r, Req("2001:db8:1:2::1")) == keyOf(r, Req("2001:db8:1:2:abcd::9")));
  CHECK(keyOf(r, Req("2001:db8:1:2::1")) != keyOf(r, Req("2001:db8:1:3::1")));
  CHECK(keyOf(r, Req("2001:db8:1:2::1")) != keyOf(r, Req("2001:db9:1:2::1")));

  auto p48 = rule("key: ip, rate: 1r/s, ipv6_prefix: 48");
  CHECK(keyOf(p48, Req("2001:db8:1:2::1")) == keyOf(p48, Req("2001:db8:1:3::1")));
  CHECK(keyOf(p48, Req("2001:db8:1:2::1")) != keyOf(p48, Req("2001:db8:2:2::1")));

  // A prefix that is not a multiple of 8 masks inside a byte.
  auto p60 = rule("key: ip, rate: 1r/s, ipv6_prefix: 60");
  CHECK(keyOf(p60, Req("2001:db8:1:20::1")) == keyOf(p60, Req("2001:db8:1:2f::1")));
  CHECK(keyOf(p60, Req("2001:db8:1:20::1")) != keyOf(p60, Req("2001:db8:1:30::1")));

  auto p128 = rule("key: ip, rate: 1r/s, ipv6_prefix: 128");
  CHECK(keyOf(p128, Req("2001:db8:1:2::1")) != keyOf(p128, Req("2001:db8:1:2::2")));
  CHECK(keyOf(p128, Req("2001:db8:1:2::1")) == keyOf(p128, Req("2001:db8:1:2::1")));
}

TEST_CASE("keyFor lua:NAME: the key a rewrite policy set, as a key or as a member source", "[limit]") {
  auto r = rule("key: lua:buyer, rate: 1r/s");
  CHECK(r.rule().key[0].kind == LimitKeyKind::kLua);
  CHECK(keyOf(r, Req().luaKey("buyer", "b-1")) == keyOf(r, Req("198.51.100.7").luaKey("buyer", "b-1")));
  CHECK(keyOf(r, Req().luaKey("buyer", "b-1")) != keyOf(r, Req().luaKey("buyer", "b-2")));
  CHECK(keyOf(r, Req().luaKey("other", "b-1").luaKey("buyer", "b-1")) == keyOf(r, Req().luaKey("buyer", "b-1")));
  // Not set (or set empty): the rule's fallback key, or skipped with missing_key: skip.
  CHECK(keyOf(r, Req()) == keyOf(r, Req().luaKey("buyer", "")));
  auto skip = rule("key: lua:buyer, rate: 1r/s, missing_key: skip");
  CHECK(keyOf(skip, Req()) == 0);
  auto member = rule("key: member=lua:account, rate: 1r/s");
  CHECK(keyOf(member, Req().luaKey("account", "a1")) == keyOf(member, Req().luaKey("account", "a1")));
  CHECK(keyOf(member, Req().luaKey("account", "a1")) != keyOf(member, Req().luaKey("account", "a2")));
  // Composite: member from Lua + item from the path.
  auto combo = rule("key: [lua:buyer, item], rate: 1r/s");
  CHECK(keyOf(combo, Req().luaKey("buyer", "b").path("/api/items/1")) !=
        keyOf(combo, Req().luaKey("buyer", "b").path("/api/items/2")));
  ConfigLoadResult bad = loadConfigString(
      "listeners: [{address: 127.0.0.1:8080}]\nlimits:\n  rules:\n    - {id: r, key: \"lua:\", rate: 1r/s}\n",
      "t.yaml");
  REQUIRE_FALSE(bad.ok());
  CHECK(joinErrors(bad.errors).find("lua:NAME") != std::string::npos);
}

TEST_CASE("normaliseUserAgent: lower case, every digit run becomes one '#'", "[limit]") {
  std::string out;
  normaliseUserAgent("Mozilla/5.0 (X11) Chrome/120.0.6099.71", &out);
  CHECK(out == "mozilla/#.# (x#) chrome/#.#.#.#");
  normaliseUserAgent("curl/8.4.0", &out);
  CHECK(out == "curl/#.#.#");
  normaliseUserAgent("", &out);
  CHECK(out.empty());
  normaliseUserAgent("2024", &out);
  CHECK(out == "#");
  normaliseUserAgent("BOT", &out);
  CHECK(out == "bot");
  // The output buffer is reused: no trace of the previous value.
  normaliseUserAgent("a1b22c333", &out);
  CHECK(out == "a#b#c#");
  // Digit runs across the 8-byte words of the fast path, and capitals inside them.
  normaliseUserAgent("ABCDEFG12345678HIJKLMNOPQRSTUVW9", &out);
  CHECK(out == "abcdefg#hijklmnopqrstuvw#");
  normaliseUserAgent("12345678ABCDEFGH12345678", &out);
  CHECK(out == "#abcdefgh#");
}

TEST_CASE("normaliseUserAgent: the word path agrees with a byte-at-a-time reference", "[limit]") {
  auto reference = [](std::string_view in) {
    std::string r;
    bool prevDigit = false;
    for (unsigned char c : in) {
      const bool d = c >= '0' && c <= '9';
      if (d && prevDigit) continue;
      r.push_back(d ? '#' : (c >= 'A' && c <= 'Z') ? static_cast<char>(c | 0x20) : static_cast<char>(c));
      prevDigit = d;
    }
    return r;
  };
  // Every byte value, in every position of a word, next to digits, capitals and the edges of
  // the ranges ('/', ':', '@', '[', '`', '{') that a wrong SWAR constant would misclassify.
  uint64_t seed = 42;
  std::string out;
  for (int round = 0; round < 20000; ++round) {
    std::string in;
    const size_t len = seed % 40;
    for (size_t i = 0; i < len; ++i) {
      seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
      const char pool[] = "09/:@AZ[`az{ \x7f";
      in.push_back((seed >> 60) < 8 ? pool[(seed >> 33) % (sizeof pool - 1)]
                                    : static_cast<char>((seed >> 40) & 0xff));
    }
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    normaliseUserAgent(in, &out);
    REQUIRE(out == reference(in));
    normaliseUserAgentPortable(in, &out);  // the path of CPUs without BMI2
    REQUIRE(out == reference(in));
  }
  // Digit-dense input: runs of every length that start, end and cross anywhere in a word, so
  // several digits are squeezed out of one word.
  for (int round = 0; round < 20000; ++round) {
    std::string in;
    const size_t len = seed % 70;
    for (size_t i = 0; i < len; ++i) {
      seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
      const char pool[] = "0123456789012345aZ.\xc3";
      in.push_back(pool[(seed >> 33) % (sizeof pool - 1)]);
    }
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    normaliseUserAgent(in, &out);
    REQUIRE(out == reference(in));
    normaliseUserAgentPortable(in, &out);  // the path of CPUs without BMI2
    REQUIRE(out == reference(in));
  }
}

TEST_CASE("keyFor user_agent: versions and case do not split a client family", "[limit]") {
  auto r = rule("key: user_agent, rate: 1r/s");
  auto ua = [&](const char* v) { return keyOf(r, Req().header("User-Agent", v)); };
  CHECK(ua("Mozilla/5.0 Chrome/120.0.6099.71") == ua("Mozilla/5.0 Chrome/121.0.6167.85"));
  CHECK(ua("Scalper/1.0") == ua("scalper/99.12"));
  CHECK(ua("Scalper/1.0") != ua("curl/8.4.0"));
  // The header name is case-insensitive; the IP plays no part.
  CHECK(keyOf(r, Req("192.0.2.1").header("user-agent", "x/1")) ==
        keyOf(r, Req("198.51.100.7").header("USER-AGENT", "X/2")));
  // No User-Agent at all is one key of its own (never skipped).
  CHECK(keyOf(r, Req()) == keyOf(r, Req("198.51.100.7")));
  CHECK(keyOf(r, Req()) != ua("x/1"));
}

TEST_CASE("keyFor member: from the member cookie by default; skip or fallback when missing",
          "[limit]") {
  auto r = rule("key: member, rate: 1r/s");
  auto member = [&](const OneRule& rr, const char* cookie) {
    return keyOf(rr, Req().header("Cookie", cookie));
  };
  CHECK(member(r, "member=alice") == member(r, "a=1; member=alice; b=2"));
  CHECK(member(r, "member=alice") != member(r, "member=bob"));
  // Same member from another IP: the same key.
  CHECK(keyOf(r, Req("198.51.100.7").header("Cookie", "member=alice")) == member(r, "member=alice"));
  // Missing (no cookie, another cookie, an empty value): skipped.
  CHECK(keyOf(r, Req()) == 0);
  CHECK(member(r, "session=x") == 0);
  CHECK(member(r, "member=") == 0);

  auto fb = rule("key: member, rate: 1r/s, missing_key: \"fallback:anon\"");
  uint64_t anon = keyOf(fb, Req());
  CHECK(anon != 0);
  CHECK(keyOf(fb, Req("198.51.100.7")) == anon);  // every anonymous request shares one key
  CHECK(member(fb, "session=x") == anon);
  CHECK(member(fb, "member=alice") != anon);
  CHECK(member(fb, "member=alice") == member(r, "member=alice"));

  auto explicit_skip = rule("key: member, rate: 1r/s, missing_key: skip");
  CHECK(keyOf(explicit_skip, Req()) == 0);

  auto hdr = rule("key: \"member=header:X-Member\", rate: 1r/s");
  CHECK(keyOf(hdr, Req().header("X-Member", "alice")) == member(r, "member=alice"));
  CHECK(keyOf(hdr, Req().header("Cookie", "member=alice")) == 0);
}

TEST_CASE("keyFor device: from the device cookie by default", "[limit]") {
  auto r = rule("key: device, rate: 1r/s");
  CHECK(keyOf(r, Req().header("Cookie", "device=d1")) != keyOf(r, Req().header("Cookie", "device=d2")));
  CHECK(keyOf(r, Req().header("Cookie", "member=d1")) == 0);
}

TEST_CASE("keyFor item: a path capture by default, or a query argument or header", "[limit]") {
  auto r = rule("key: item, rate: 1r/s");
  auto item = [&](const OneRule& rr, const char* target) { return keyOf(rr, Req().path(target)); };
  CHECK(item(r, "/api/items/42") == item(r, "/api/items/42/checkout"));
  CHECK(item(r, "/api/items/42") == item(r, "/item/42"));
  CHECK(item(r, "/api/items/42?x=1") == item(r, "/api/items/42"));
  CHECK(item(r, "/api/items/42") != item(r, "/api/items/43"));
  CHECK(item(r, "/api/cart") == 0);
  CHECK(item(r, "/") == 0);

  auto q = rule("key: \"item=query:id\", rate: 1r/s");
  CHECK(item(q, "/buy?id=42") == item(q, "/other?x=1&id=42"));
  CHECK(item(q, "/buy?id=42") != item(q, "/buy?id=43"));
  CHECK(item(q, "/buy") == 0);
  CHECK(item(q, "/buy?id=") == 0);
  CHECK(item(q, "/buy?id=42") == item(r, "/api/items/42"));  // the value is what is hashed

  auto p = rule("key: \"item=path:^/p/([^/]+)\", rate: 1r/s");
  CHECK(item(p, "/p/sku-1/reviews") == item(p, "/p/sku-1"));
  CHECK(item(p, "/p/sku-1") != item(p, "/p/sku-2"));
  CHECK(item(p, "/api/items/1") == 0);
  // The capture is matched against the path only, never the query string.
  CHECK(item(p, "/x?next=/p/sku-1") == 0);

  auto h = rule("key: \"item=header:X-Item\", rate: 1r/s");
  CHECK(keyOf(h, Req().header("X-Item", "7")) == item(r, "/item/7"));
}

TEST_CASE("keyFor route and global", "[limit]") {
  auto r = rule("key: route, rate: 1r/s");
  CHECK(keyOf(r, Req("192.0.2.1").on("checkout")) == keyOf(r, Req("198.51.100.7").on("checkout")));
  CHECK(keyOf(r, Req().on("checkout")) != keyOf(r, Req().on("search")));

  auto g = rule("key: global, rate: 1r/s");
  CHECK(keyOf(g, Req("192.0.2.1").on("a").path("/x")) == keyOf(g, Req("2001:db8::1").on("b")));
}

TEST_CASE("keyFor header:, cookie:, query: parts", "[limit]") {
  auto h = rule("key: \"header:X-Api-Key\", rate: 1r/s");
  CHECK(keyOf(h, Req().header("x-api-key", "k1")) == keyOf(h, Req("198.51.100.7").header("X-Api-Key", "k1")));
  CHECK(keyOf(h, Req().header("X-Api-Key", "k1")) != keyOf(h, Req().header("X-Api-Key", "k2")));
  CHECK(keyOf(h, Req().header("X-Api-Key", "")) == 0);
  CHECK(keyOf(h, Req()) == 0);

  auto c = rule("key: \"cookie:sid\", rate: 1r/s");
  CHECK(keyOf(c, Req().header("Cookie", "sid=s1")) != keyOf(c, Req().header("Cookie", "sid=s2")));
  CHECK(keyOf(c, Req().header("Cookie", "member=s1")) == 0);

  auto q = rule("key: \"query:q\", rate: 1r/s");
  CHECK(keyOf(q, Req().path("/search?q=shoes")) == keyOf(q, Req().path("/other?q=shoes&page=2")));
  CHECK(keyOf(q, Req().path("/search?q=shoes")) != keyOf(q, Req().path("/search?q=hats")));
  CHECK(keyOf(q, Req().path("/search")) == 0);
}

TEST_CASE("keyFor composite keys: differ from their parts and from each other", "[limit]") {
  auto mi = rule("key: [member, item], rate: 1r/s");
  auto m = rule("key: member, rate: 1r/s");
  auto i = rule("key: item, rate: 1r/s");
  auto req = [](const char* member, const char* path) {
    Req r;
    r.header("Cookie", std::string("member=") + member).path(path);
    return r;
  };
  uint64_t a1 = keyOf(mi, req("alice", "/api/items/1"));
  CHECK(a1 == keyOf(mi, req("alice", "/api/items/1/checkout")));
  CHECK(a1 != keyOf(mi, req("alice", "/api/items/2")));
  CHECK(a1 != keyOf(mi, req("bob", "/api/items/1")));
  CHECK(a1 != keyOf(m, req("alice", "/api/items/1")));
  CHECK(a1 != keyOf(i, req("alice", "/api/items/1")));
  // Part boundaries matter: ("ab", "c") is not ("a", "bc").
  CHECK(keyOf(mi, req("ab", "/api/items/c")) != keyOf(mi, req("a", "/api/items/bc")));
  // Order matters.
  auto im = rule("key: [item, member], rate: 1r/s");
  CHECK(keyOf(im, req("alice", "/api/items/1")) != a1);
  // One missing part skips the whole composite key...
  CHECK(keyOf(mi, req("alice", "/api/cart")) == 0);
  CHECK(keyOf(mi, Req().path("/api/items/1")) == 0);
  // ...or puts the fallback in that part's place.
  auto fb = rule("key: [member, item], rate: 1r/s, missing_key: \"fallback:anon\"");
  CHECK(keyOf(fb, Req().path("/api/items/1")) == keyOf(fb, Req("198.51.100.7").path("/api/items/1")));
  CHECK(keyOf(fb, Req().path("/api/items/1")) != keyOf(fb, Req().path("/api/items/2")));
  // ip + user_agent.
  auto iu = rule("key: [ip, user_agent], rate: 1r/s");
  CHECK(keyOf(iu, Req("192.0.2.1").header("User-Agent", "a/1")) ==
        keyOf(iu, Req("192.0.2.1").header("User-Agent", "a/2")));
  CHECK(keyOf(iu, Req("192.0.2.1").header("User-Agent", "a/1")) !=
        keyOf(iu, Req("192.0.2.2").header("User-Agent", "a/1")));
}

TEST_CASE("keyFor: oversized values are hashed like any other", "[limit]") {
  auto h = rule("key: \"header:X-Key\", rate: 1r/s");
  std::string big(100000, 'k');
  std::string big2 = big;
  big2.back() = 'j';
  CHECK(keyOf(h, Req().header("X-Key", big)) == keyOf(h, Req().header("X-Key", big)));
  CHECK(keyOf(h, Req().header("X-Key", big)) != keyOf(h, Req().header("X-Key", big2)));
}

// ---- LimitSet across reloads

const Nanos kT0 = 1000 * kSeconds;

// Takes from rule `i` of `set` for `key` until it rejects; returns how many passed.
int drain(LimitSet& set, size_t i, uint64_t key, Nanos now) {
  int passed = 0;
  while (set.rule(i).rate->take(key, now, 1, nullptr).verdict != limiter::Verdict::kReject) {
    if (++passed > 1000) FAIL("never rejects");
  }
  return passed;
}

limiter::Verdict takeOne(LimitSet& set, size_t i, uint64_t key, Nanos now) {
  return set.rule(i).rate->take(key, now, 1, nullptr).verdict;
}

TEST_CASE("LimitSet: one runtime per rule, in config order", "[limit]") {
  ConfigPtr c = configWith(R"(    - {id: lb, key: ip, rate: 1r/s}
    - {id: sw, key: member, algorithm: sliding_window, limit: 3, window: 1m}
    - {id: cc, key: route, algorithm: concurrency, max_active: 2}
)");
  LimitSet set(*c, nullptr);
  REQUIRE(set.size() == 3);
  CHECK(set.rule(0).config == &c->limit_rules[0]);
  CHECK(set.rule(0).rate != nullptr);
  CHECK(set.rule(0).gcra_table != nullptr);
  CHECK(set.rule(0).concurrency == nullptr);
  CHECK(set.rule(1).rate != nullptr);
  CHECK(set.rule(1).window_table != nullptr);
  CHECK(set.rule(2).rate == nullptr);
  REQUIRE(set.rule(2).concurrency != nullptr);
  auto a = set.rule(2).concurrency->tryAcquire(7);
  auto b = set.rule(2).concurrency->tryAcquire(7);
  CHECK(a.acquired());
  CHECK(b.acquired());
  CHECK_FALSE(set.rule(2).concurrency->tryAcquire(7).acquired());
  CHECK(set.rule(2).concurrency->tryAcquire(8).acquired());
}

TEST_CASE("LimitSet: a reload keeps the state of rules with the same id and key", "[limit]") {
  const uint64_t key = 42;
  ConfigPtr a = configWith(R"(    - {id: per-ip, key: ip, rate: 1r/s, burst: 2, nodelay: true}
    - {id: quota, key: member, algorithm: sliding_window, limit: 3, window: 1m}
    - {id: active, key: route, algorithm: concurrency, max_active: 1}
)");
  auto setA = std::make_unique<LimitSet>(*a, nullptr);
  CHECK(drain(*setA, 0, key, kT0) == 3);
  CHECK(drain(*setA, 1, key, kT0) == 3);
  auto slot = setA->rule(2).concurrency->tryAcquire(key);
  REQUIRE(slot.acquired());

  // Config B: same rules (one with a new burst and rule order changed), another route, another
  // rule added.
  ConfigPtr b = configWith(R"(    - {id: quota, key: member, algorithm: sliding_window, limit: 3, window: 1m}
    - {id: new-rule, key: ip, rate: 1r/s}
    - {id: per-ip, key: ip, rate: 1r/s, burst: 3, nodelay: true}
    - {id: active, key: route, algorithm: concurrency, max_active: 1}
)");
  auto setB = std::make_unique<LimitSet>(*b, setA.get());
  CHECK(setB->rule(2).gcra_table == setA->rule(0).gcra_table);
  CHECK(setB->rule(0).window_table == setA->rule(1).window_table);
  CHECK(setB->rule(3).concurrency == setA->rule(2).concurrency);
  // The carried debt: the bucket that spent burst 2 has one more place under burst 3, then
  // rejects; the quota stays spent; the slot held across the reload still counts.
  CHECK(takeOne(*setB, 2, key, kT0) == limiter::Verdict::kAllow);
  CHECK(takeOne(*setB, 2, key, kT0) == limiter::Verdict::kReject);
  CHECK(takeOne(*setB, 0, key, kT0) == limiter::Verdict::kReject);
  CHECK_FALSE(setB->rule(3).concurrency->tryAcquire(key).acquired());
  // The new rule starts fresh.
  CHECK(takeOne(*setB, 1, key, kT0) == limiter::Verdict::kAllow);
  // The old generation goes away (in-flight requests finished on it); state lives on in B.
  setA.reset();
  a.reset();
  CHECK(takeOne(*setB, 2, key, kT0) == limiter::Verdict::kReject);
  slot.slot.release();  // the request that started before the reload ends
  CHECK(setB->rule(3).concurrency->tryAcquire(key).acquired());
  // Time still refills the carried bucket.
  CHECK(takeOne(*setB, 2, key, kT0 + kSeconds) == limiter::Verdict::kAllow);
}

TEST_CASE("LimitSet: a reload that changes the key, algorithm or window starts fresh", "[limit]") {
  const uint64_t key = 42;
  ConfigPtr a = configWith(R"(    - {id: r1, key: ip, rate: 1r/s, nodelay: true}
    - {id: r2, key: ip, rate: 1r/s, nodelay: true}
    - {id: r3, key: member, algorithm: sliding_window, limit: 1, window: 1m}
    - {id: r4, key: ip, rate: 1r/s, nodelay: true}
    - {id: r5, key: ip, rate: 1r/s, nodelay: true}
)");
  LimitSet setA(*a, nullptr);
  for (size_t i = 0; i < setA.size(); i++) CHECK(drain(setA, i, key, kT0) == 1);

  ConfigPtr b = configWith(R"(    - {id: r1, key: [ip, user_agent], rate: 1r/s, nodelay: true}
    - {id: r2, key: ip, algorithm: sliding_window, limit: 1, window: 1m}
    - {id: r3, key: member, algorithm: sliding_window, limit: 1, window: 2m}
    - {id: r4-renamed, key: ip, rate: 1r/s, nodelay: true}
    - {id: r5, key: ip, rate: 1r/s, nodelay: true, ipv6_prefix: 56}
)");
  LimitSet setB(*b, &setA);
  for (size_t i = 0; i < setB.size(); i++) {
    INFO("rule " << setB.rule(i).config->id);
    CHECK(takeOne(setB, i, key, kT0) == limiter::Verdict::kAllow);
  }
  CHECK(setB.rule(0).gcra_table != setA.rule(0).gcra_table);
  CHECK(setB.rule(2).window_table != setA.rule(2).window_table);
}

TEST_CASE("LimitSet: a reload with a new memory size keeps nothing, a new rate keeps the debt",
          "[limit]") {
  const uint64_t key = 42;
  ConfigPtr a = configWith("    - {id: r, key: ip, rate: 1r/s, burst: 4, nodelay: true}\n");
  LimitSet setA(*a, nullptr);
  CHECK(drain(setA, 0, key, kT0) == 5);

  // Halving the rate keeps the debt (5 s of backlog) under the new tolerance (5 x 2 s): two
  // more requests fit, where a fresh key would get five.
  ConfigPtr slower = configWith("    - {id: r, key: ip, rate: 1r/2s, burst: 4, nodelay: true}\n");
  LimitSet setB(*slower, &setA);
  CHECK(setB.rule(0).gcra_table == setA.rule(0).gcra_table);
  CHECK(drain(setB, 0, key, kT0) == 2);
  CHECK(drain(setB, 0, key + 1, kT0) == 5);

  ConfigPtr bigger = configWith("    - {id: r, key: ip, rate: 1r/s, burst: 4, nodelay: true, memory: 1m}\n");
  LimitSet setC(*bigger, &setB);
  CHECK(setC.rule(0).gcra_table != setB.rule(0).gcra_table);
  CHECK(drain(setC, 0, key, kT0) == 5);
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

// The hand-written default item matcher must agree with the regex it replaces on every path.
TEST_CASE("limit set: the default item matcher agrees with its regex", "[limit_set]") {
  re2::RE2 re("^/(?:api/)?items?/([^/?]+)");
  std::vector<std::string> paths = {"/item/42", "/items/42", "/api/items/42/price", "/api/item/7",
                                    "/api/items/", "/api/items", "/items//x", "/itemz/1", "/api/api/items/1",
                                    "/item/a?b", "/x/items/1", "", "/", "/items/\xc3\xa9", "/api/items/42?x=1",
                                    "/ITEMS/1", "/api/itemss/1", "/item/%2F"};
  uint64_t seed = 12345;
  const char alphabet[] = "/ai?tems1p";
  for (int i = 0; i < 20000; i++) {  // random paths over the pattern's own characters
    std::string p;
    size_t n = (seed >> 33) % 16;
    for (size_t j = 0; j < n; j++) {
      seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
      p.push_back(alphabet[(seed >> 33) % (sizeof(alphabet) - 1)]);
    }
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    paths.push_back("/" + p);
  }
  for (const auto& p : paths) {
    INFO(p);
    re2::StringPiece capture;
    bool want = RE2::PartialMatch(p, re, &capture) && !capture.empty();
    std::string_view got;
    bool have = matchDefaultItemPath(p, &got);
    REQUIRE(have == want);
    if (have) REQUIRE(got == std::string_view(capture.data(), capture.size()));
  }
  // One deliberate difference: RE2 (UTF-8 mode) finds no item in invalid UTF-8; the matcher takes
  // the bytes as they are, so such ids are still limited per item rather than skipped.
  std::string_view got;
  CHECK(matchDefaultItemPath("/items/\xff\xfe", &got));
  CHECK(got == "\xff\xfe");
}

TEST_CASE("limit set: UA normalisation folds case and digit runs in one pass", "[limit_set]") {
  std::string out;
  normaliseUserAgent("Mozilla/5.0 (X11) Chrome/120.0.6099.71 ZZ", &out);
  CHECK(out == "mozilla/#.# (x#) chrome/#.#.#.# zz");
  normaliseUserAgent("", &out);
  CHECK(out.empty());
  normaliseUserAgent("12345", &out);
  CHECK(out == "#");
  normaliseUserAgent("\xC3\x89[]@`{", &out);  // bytes outside A-Z are kept as they are
  CHECK(out == "\xC3\x89[]@`{");
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

TEST_CASE("limit set: the cached UA key equals the key of the normalised UA", "[limit_set]") {
  std::string norm;
  for (const char* ua : {"Mozilla/5.0 (X11) Chrome/120.0.6099.71", "MOZILLA/4.1 (x11) chrome/1.2.3.4", "", "curl/8.1"}) {
    normaliseUserAgent(ua, &norm);
    CHECK(userAgentKey(ua) == hash64(norm));
    CHECK(userAgentKey(ua) == hash64(norm));  // second call: from the cache
  }
  CHECK(userAgentKey("Chrome/120.0") == userAgentKey("chrome/121.1"));
  CHECK(userAgentKey("Chrome/120.0") != userAgentKey("Firefox/120.0"));
}

}  // namespace
}  // namespace sluice
