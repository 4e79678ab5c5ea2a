// Risk decision cost (issue 4 target): median <= 2 us per RiskEngine::evaluate with every signal
// on: header-order fingerprint, UA + client hints + header-order profile, three GeoIP databases
// (country, ASN, anonymous-IP), six scalper lists (10k CIDRs, 10k ids each), behaviour for IP,
// device and member (100k distinct of each, tables larger than L2), two rules, and a valid pass
// token cookie verified on every request (AES-256-GCM + subject HMAC).
//
//   build/bench/sluice-bench-risk
//   build/bench/sluice-bench-risk --benchmark_filter=Evaluate
//
// The clock is a plain counter advanced 50 us per request. GeoIP files are the MaxMind test
// databases in tests/data/geoip (small trees: a production GeoLite2 file is deeper, expect a
// few tens of ns more per lookup).
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/clock.h"
#include "risk/risk_engine.h"

namespace sluice::risk {
namespace {

constexpr int kEntities = 100000;
const char* kUa =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36";

std::string geo(const char* f) { return std::string(SLUICE_SOURCE_DIR) + "/tests/data/geoip/" + f; }

struct World {
  RiskPolicyPtr policy;
  std::unique_ptr<RiskEngine> engine;
  std::vector<std::string> devices, members, ips, cookies, items;
  std::vector<RiskRequest> requests;
};

std::string writeList(const std::string& name, int n, bool cidr) {
  const std::string path = "/tmp/sluice-bench-risk-" + std::to_string(::getpid()) + "-" + name;
  std::ofstream out(path);
  for (int i = 0; i < n; ++i) {
    if (cidr) out << "100." << (i >> 8 & 255) << "." << (i & 255) << ".0/24\n";
    else out << name << "-" << i << "\n";
  }
  return path;
}

World& world() {
  static World w = [] {
    World w;
    RiskConfig cfg = RiskConfig::defaults();
    cfg.geoip = {geo("GeoIP2-Country-Test.mmdb"), geo("GeoLite2-ASN-Test.mmdb"),
                 geo("GeoIP2-Anonymous-IP-Test.mmdb")};
    cfg.riskyCountries = {"XX", "YY"};
    cfg.riskyAsns = {64500, 64501, 1221};
    cfg.lists = {{"ips", ListKind::kIp, writeList("ips", 10000, true), false, 80},
                 {"members", ListKind::kMember, writeList("members", 10000, false), false, 100},
                 {"devices", ListKind::kDevice, writeList("devices", 10000, false), false, 100},
                 {"addresses", ListKind::kAddress, writeList("addresses", 10000, false), false, 60},
                 {"fps", ListKind::kFingerprint, writeList("fps", 10000, false), false, 50},
                 {"vip", ListKind::kMember, writeList("vip", 10000, false), true, 0}};
    cfg.rules = {{"headless_checkout", {"ua.headless"}, {"checkout"}, 40},
                 {"proxy_and_order", {"ip.public_proxy", "ua.header_order_mismatch"}, {}, 20}};
    cfg.behaviour.memoryPerKind = size_t{32} << 20;
    std::vector<std::string> errors;
    w.policy = buildRiskPolicy(cfg, {std::string(40, 'M'), std::string(40, 'V')}, &errors);
    if (!w.policy) {
      fprintf(stderr, "policy: %s\n", errors.front().c_str());
      abort();
    }
    for (const auto& l : cfg.lists) ::unlink(l.file.c_str());
    w.engine = std::make_unique<RiskEngine>(RiskStateOptions{size_t{32} << 20, size_t{4} << 20});
    std::mt19937_64 rng(7);
    for (int i = 0; i < kEntities; ++i) {
      w.devices.push_back("device-" + std::to_string(rng()));
      w.members.push_back("member-" + std::to_string(rng()));
      w.ips.push_back(std::to_string(1 + rng() % 220) + "." + std::to_string(rng() % 256) + "." +
                      std::to_string(rng() % 256) + "." + std::to_string(rng() % 256));
      w.items.push_back("sku-" + std::to_string(i % 500));
    }
    w.cookies.resize(kEntities);
    w.requests.resize(kEntities);
    for (int i = 0; i < kEntities; ++i) {
      RiskRequest& r = w.requests[i];
      r.method = "GET";
      r.path = "/item";
      IpAddress::parse(w.ips[i], &r.clientIp);
      r.deviceId = w.devices[i];
      r.memberId = w.members[i];
      r.addressHash = "addr-hash";
      r.tlsFingerprint = "t13d1516h2_8daaf6152771_b0da82dd1658";
      r.routeClass = i % 4 == 0 ? RouteClass::kItemDetail : i % 4 == 1 ? RouteClass::kApi
                   : i % 4 == 2 ? RouteClass::kPageView : RouteClass::kCheckout;
      r.itemId = w.items[i];
      r.wallSeconds = 1700000000;
      const std::string token = w.policy->tokens->issue({r.deviceId, r.memberId}, 2, 1, r.clientIp,
                                                        kUa, r.tlsFingerprint, r.wallSeconds, 3600);
      w.cookies[i] = "sid=" + std::to_string(i) + "; cart=1; sluice_pass=" + token;
      r.headers = {{"Host", "shop.example"},
                   {"Connection", "keep-alive"},
                   {"sec-ch-ua", "\"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\""},
                   {"sec-ch-ua-mobile", "?0"},
                   {"sec-ch-ua-platform", "\"Windows\""},
                   {"Upgrade-Insecure-Requests", "1"},
                   {"User-Agent", kUa},
                   {"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
                   {"Sec-Fetch-Site", "same-origin"},
                   {"Sec-Fetch-Mode", "navigate"},
                   {"Sec-Fetch-User", "?1"},
                   {"Sec-Fetch-Dest", "document"},
                   {"Referer", "https://shop.example/"},
                   {"Accept-Encoding", "gzip, deflate, br, zstd"},
                   {"Accept-Language", "en-GB,en;q=0.9"},
                   {"Cookie", w.cookies[i]}};
      r.cookies.split(r.headers);  // as the proxy's identify phase does, before evaluate()
    }
    return w;
  }();
  return w;
}

// Brings a request's bytes into the cache, as the proxy's parser has just done when it calls
// evaluate(): the header array, every name and value, and the id strings.
uint64_t touch(const RiskRequest& r) {
  uint64_t sum = 0;
  auto add = [&](std::string_view v) {
    for (size_t k = 0; k < v.size(); k += 32) sum += static_cast<unsigned char>(v[k]);
    if (!v.empty()) sum += static_cast<unsigned char>(v.back());
  };
  for (const auto& h : r.headers) {
    add(h.first);
    add(h.second);
  }
  add(r.deviceId);
  add(r.memberId);
  add(r.itemId);
  return sum;
}

// Every signal on, a valid token per request, 100k entities visited in a fixed random order.
// `hot_request`: each batch of 16 requests is read (untimed) right before it is scored, so the
// request is in the cache as it is in the proxy right after parsing; the per-entity state
// (behaviour tables, lists, token keys) is as cold as 100k entities make it. Without it, every
// request's header array, cookie and ids are also cache misses (about 1 us here), which the
// proxy never sees.
void evaluateAll(benchmark::State& state, bool hot_request) {
  World& w = world();
  std::vector<uint32_t> order(kEntities);
  for (int i = 0; i < kEntities; ++i) order[i] = static_cast<uint32_t>(i);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(1));
  constexpr size_t kBatch = 16;
  size_t i = 0;
  Nanos now = 1000 * kSeconds;
  int challenged = 0;
  uint64_t touched = 0;
  for (auto _ : state) {
    if (hot_request && i % kBatch == 0) {
      state.PauseTiming();
      for (size_t k = i; k < i + kBatch && k < order.size(); ++k) touched += touch(w.requests[order[k]]);
      state.ResumeTiming();
    }
    const RiskRequest& r = w.requests[order[i]];
    RiskDecision d = w.engine->evaluate(*w.policy, r, now);
    challenged += d.action != RiskAction::kAllow;
    benchmark::DoNotOptimize(d);
    now += 50000;
    if (++i == order.size()) i = 0;
  }
  benchmark::DoNotOptimize(touched);
  state.counters["not_allowed_share"] = static_cast<double>(challenged) / state.iterations();
}
void BM_EvaluateAllSignals(benchmark::State& state) { evaluateAll(state, true); }
BENCHMARK(BM_EvaluateAllSignals)->Repetitions(5)->ReportAggregatesOnly(true);
void BM_EvaluateAllSignalsColdRequest(benchmark::State& state) { evaluateAll(state, false); }
BENCHMARK(BM_EvaluateAllSignalsColdRequest)->Repetitions(5)->ReportAggregatesOnly(true);

// The same request without the token cookie (no AES-GCM): what the token costs.
void BM_EvaluateNoToken(benchmark::State& state) {
  World& w = world();
  std::vector<RiskRequest> reqs(w.requests.begin(), w.requests.begin() + 10000);
  for (auto& r : reqs) {
    r.headers.pop_back();
    r.cookies.split(r.headers);
  }
  size_t i = 0;
  Nanos now = 5000 * kSeconds;
  for (auto _ : state) {
    benchmark::DoNotOptimize(w.engine->evaluate(*w.policy, reqs[i], now));
    now += 50000;
    if (++i == reqs.size()) i = 0;
  }
}
BENCHMARK(BM_EvaluateNoToken)->Repetitions(5)->ReportAggregatesOnly(true);

void BM_Fingerprint(benchmark::State& state) {
  const RiskRequest& r = world().requests[0];
  for (auto _ : state) benchmark::DoNotOptimize(HeaderOrderFingerprint::compute(r));
}
BENCHMARK(BM_Fingerprint);

void BM_UserAgent(benchmark::State& state) {
  const RiskRequest& r = world().requests[0];
  for (auto _ : state) benchmark::DoNotOptimize(UserAgentAnalysis::analyze(r));
}
BENCHMARK(BM_UserAgent);

void BM_GeoIpThreeDatabases(benchmark::State& state) {
  World& w = world();
  size_t i = 0;
  for (auto _ : state) {
    GeoIpRecord rec;
    for (const auto& db : w.policy->geoip) {
      GeoIpRecord one;
      if (db->lookup(w.requests[i].clientIp, &one)) rec.merge(one);
    }
    benchmark::DoNotOptimize(rec);
    if (++i == 1000) i = 0;
  }
}
BENCHMARK(BM_GeoIpThreeDatabases);

void BM_PassTokenVerify(benchmark::State& state) {
  World& w = world();
  const RiskRequest& r = w.requests[0];
  const std::string_view cookie = RiskEngine::findCookie(r, "sluice_pass");
  for (auto _ : state) {
    benchmark::DoNotOptimize(w.policy->tokens->verify(cookie, {r.deviceId, r.memberId}, r.clientIp,
                                                      kUa, r.tlsFingerprint, r.wallSeconds));
  }
}
BENCHMARK(BM_PassTokenVerify);

void BM_ProofOfWorkVerify(benchmark::State& state) {
  World& w = world();
  SpentSet spent(size_t{16} << 20);
  ChallengeTicket t;
  const std::string ticket = w.policy->tickets->issue(1, 1, {}, 1700000000, 300, &t);
  const std::string counter = std::to_string(solveProofOfWork(t.nonceHex(), 1));
  for (auto _ : state) {
    // Replays after the first: measures the full check path (MAC, hash, spent-set probe).
    benchmark::DoNotOptimize(
        verifyProofOfWork(*w.policy->tickets, spent, ticket, counter, nullptr, 1700000000));
  }
}
BENCHMARK(BM_ProofOfWorkVerify);

}  // namespace
}  // namespace sluice::risk

BENCHMARK_MAIN();
