// Limiter decision cost (issue 3 targets): median <= 60 ns per rule check at 1M live keys on one
// thread, two threads on distinct keys >= 1.6x one thread, <= 64 bytes per live key.
//
//   build/bench/sluice-bench-limiter                 # everything, then a summary
//   build/bench/sluice-bench-limiter --benchmark_filter=Gcra
//
// Keys are 1M distinct client addresses, hashed once up front (the proxy hashes each key once per
// request; BM_GcraCheckHashingKey includes that cost), visited in a random permutation so every
// check is a cache miss into a table larger than L2. The clock is a plain counter advanced 100 ns
// per check: the proxy reads its clock once per event-loop turn, not per rule.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/clock.h"
#include "core/hash.h"
#include "limiter/admission.h"
#include "limiter/concurrency.h"
#include "limiter/gcra.h"
#include "limiter/heavy_hitters.h"
#include "limiter/sliding_window.h"

namespace sluice::limiter {
namespace {

constexpr size_t kLiveKeys = 1 << 20;          // 1,048,576 live keys
constexpr size_t kTableMemory = size_t{32} << 20;  // `memory: 32m`

struct KeySet {
  std::vector<std::string> text;   // "10.a.b.c"
  std::vector<uint64_t> hashes;    // hash64(text), in a random visiting order
  std::vector<uint32_t> order;     // the same permutation, as indexes into text
};

const KeySet& keys() {
  static const KeySet set = [] {
    KeySet s;
    s.text.reserve(kLiveKeys);
    for (size_t i = 0; i < kLiveKeys; ++i) {
      s.text.push_back("10." + std::to_string((i >> 16) & 255) + "." + std::to_string((i >> 8) & 255) +
                       "." + std::to_string(i & 255));
    }
    s.order.resize(kLiveKeys);
    std::iota(s.order.begin(), s.order.end(), 0u);
    std::shuffle(s.order.begin(), s.order.end(), std::mt19937_64(42));
    s.hashes.reserve(kLiveKeys);
    for (uint32_t i : s.order) s.hashes.push_back(hash64(s.text[i]));
    return s;
  }();
  return set;
}

GcraParams ipRule() {
  GcraParams p = GcraParams::perSecond(100, 50);  // limit_req rate=100r/s burst=50 nodelay
  p.nodelay = true;
  return p;
}

// One table with every key live, shared by all GCRA benchmarks and threads.
GcraLimiter& gcraAt1M() {
  static GcraLimiter* limiter = [] {
    auto* l = new GcraLimiter(ipRule(), std::make_shared<GcraTable>(kTableMemory, GcraResolution::kNanos));
    for (uint64_t h : keys().hashes) l->take(h, 0, 1, nullptr);
    return l;
  }();
  return *limiter;
}

void reportTable(benchmark::State& state, const GcraTable& table) {
  const double live = static_cast<double>(table.entries.liveEntries());
  state.counters["live_keys"] = live;
  state.counters["bytes_per_key"] = static_cast<double>(table.entries.memoryBytes()) / live;
}

// Threads split the keys: thread t of n visits its own 1/n of the permutation (distinct keys).
void BM_GcraCheck1M(benchmark::State& state) {
  GcraLimiter& limiter = gcraAt1M();
  const std::vector<uint64_t>& hashes = keys().hashes;
  const size_t share = kLiveKeys / static_cast<size_t>(state.threads());
  const size_t begin = share * static_cast<size_t>(state.thread_index());
  size_t i = 0;
  Nanos now = kSeconds;
  for (auto _ : state) {
    benchmark::DoNotOptimize(limiter.take(hashes[begin + i], now, 1, nullptr));
    if (++i == share) i = 0;
    now += 100;
  }
  state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) reportTable(state, *limiter.table());
}
BENCHMARK(BM_GcraCheck1M)->Threads(1)->Threads(2)->UseRealTime()->Repetitions(7)->ReportAggregatesOnly(true);

// What the proxy gets if the identify phase calls prefetch(key) as soon as a request's keys are
// known and the limit phase checks them a little later: here the next request's set is
// prefetched while this one is checked. Not the headline figure: it assumes that overlap exists.
void BM_GcraCheck1MPrefetchedAhead(benchmark::State& state) {
  GcraLimiter& limiter = gcraAt1M();
  const std::vector<uint64_t>& hashes = keys().hashes;
  size_t i = 0;
  Nanos now = kSeconds;
  for (auto _ : state) {
    const size_t next = i + 1 == kLiveKeys ? 0 : i + 1;
    limiter.prefetch(hashes[next]);
    benchmark::DoNotOptimize(limiter.take(hashes[i], now, 1, nullptr));
    i = next;
    now += 100;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GcraCheck1MPrefetchedAhead)->Repetitions(5)->ReportAggregatesOnly(true);

// Storefront traffic is skewed: the same 1M live keys drawn Zipf(0.99) (a few thousand clients
// make most requests), popular keys scattered over the table.
const std::vector<uint64_t>& zipfTrace() {
  static const std::vector<uint64_t> trace = [] {
    constexpr double kSkew = 0.99;
    std::vector<double> cdf(kLiveKeys);
    double sum = 0;
    for (size_t r = 0; r < kLiveKeys; ++r) cdf[r] = (sum += 1.0 / std::pow(static_cast<double>(r + 1), kSkew));
    std::mt19937_64 rng(99);
    std::uniform_real_distribution<double> u(0, sum);
    std::vector<uint64_t> out(size_t{1} << 22);
    for (uint64_t& key : out) {
      const size_t rank = static_cast<size_t>(std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin());
      key = keys().hashes[(rank * 0x9E3779B1u) % kLiveKeys];  // scatter ranks over the key set
    }
    return out;
  }();
  return trace;
}

void BM_GcraCheck1MZipf(benchmark::State& state) {
  GcraLimiter& limiter = gcraAt1M();
  const std::vector<uint64_t>& trace = zipfTrace();
  const size_t mask = trace.size() - 1;
  size_t i = 0;
  Nanos now = kSeconds;
  for (auto _ : state) {
    benchmark::DoNotOptimize(limiter.take(trace[i & mask], now, 1, nullptr));
    ++i;
    now += 100;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GcraCheck1MZipf)->Repetitions(5)->ReportAggregatesOnly(true);

void BM_GcraCheckHashingKey(benchmark::State& state) {
  GcraLimiter& limiter = gcraAt1M();
  const KeySet& k = keys();
  size_t i = 0;
  Nanos now = kSeconds;
  for (auto _ : state) {
    benchmark::DoNotOptimize(limiter.take(hash64(k.text[k.order[i]]), now, 1, nullptr));
    if (++i == kLiveKeys) i = 0;
    now += 100;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GcraCheckHashingKey)->Repetitions(5)->ReportAggregatesOnly(true);

void BM_GcraCheckNginxMode1M(benchmark::State& state) {
  static GcraLimiter* limiter = [] {
    GcraParams p = ipRule();
    p.resolution = GcraResolution::kNginxMillis;
    auto* l = new GcraLimiter(p, std::make_shared<GcraTable>(kTableMemory, p.resolution));
    for (uint64_t h : keys().hashes) l->take(h, 0, 1, nullptr);
    return l;
  }();
  const std::vector<uint64_t>& hashes = keys().hashes;
  size_t i = 0;
  Nanos now = kSeconds;
  for (auto _ : state) {
    benchmark::DoNotOptimize(limiter->take(hashes[i], now, 1, nullptr));
    if (++i == kLiveKeys) i = 0;
    now += 100;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GcraCheckNginxMode1M)->Repetitions(5)->ReportAggregatesOnly(true);

// Hot key: one member hammering, the table line stays in L1.
void BM_GcraCheckHotKey(benchmark::State& state) {
  GcraLimiter& limiter = gcraAt1M();
  const uint64_t key = keys().hashes[12345];
  Nanos now = kSeconds;
  for (auto _ : state) {
    benchmark::DoNotOptimize(limiter.take(key, now, 1, nullptr));
    now += 100;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GcraCheckHotKey);

void BM_SlidingWindowCheck1M(benchmark::State& state) {
  static SlidingWindowLimiter* limiter = [] {
    SlidingWindowParams p;
    p.limit = 1000;
    p.window = 60 * kSeconds;
    auto* l = new SlidingWindowLimiter(p, std::make_shared<SlidingWindowTable>(size_t{48} << 20));
    for (uint64_t h : keys().hashes) l->take(h, 0, 1, nullptr);
    return l;
  }();
  const std::vector<uint64_t>& hashes = keys().hashes;
  size_t i = 0;
  Nanos now = kSeconds;
  for (auto _ : state) {
    benchmark::DoNotOptimize(limiter->take(hashes[i], now, 1, nullptr));
    if (++i == kLiveKeys) i = 0;
    now += 100;
  }
  state.SetItemsProcessed(state.iterations());
  const double live = static_cast<double>(limiter->table()->entries.liveEntries());
  state.counters["bytes_per_key"] = static_cast<double>(limiter->table()->entries.memoryBytes()) / live;
}
BENCHMARK(BM_SlidingWindowCheck1M)->Repetitions(5)->ReportAggregatesOnly(true);

// The limit phase of one request: member GCRA + IP GCRA + member quota, check all then charge all.
void BM_AdmitThreeRules(benchmark::State& state) {
  static SlidingWindowLimiter* quota = [] {
    SlidingWindowParams p;
    p.limit = 1000000;
    p.window = 60 * kSeconds;
    return new SlidingWindowLimiter(p, std::make_shared<SlidingWindowTable>(size_t{48} << 20));
  }();
  static GcraLimiter* member = new GcraLimiter(ipRule(), std::make_shared<GcraTable>(kTableMemory, GcraResolution::kNanos));
  GcraLimiter& ip = gcraAt1M();
  const std::vector<uint64_t>& hashes = keys().hashes;
  size_t i = 0;
  Nanos now = kSeconds;
  for (auto _ : state) {
    const uint64_t k = hashes[i];
    const RateRuleCheck checks[] = {{member, k ^ 1}, {&ip, k}, {quota, k ^ 2}};
    benchmark::DoNotOptimize(admit(checks, {}, now));
    if (++i == kLiveKeys) i = 0;
    now += 100;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AdmitThreeRules)->Repetitions(3)->ReportAggregatesOnly(true);

void BM_KeyedConcurrencyAcquireRelease(benchmark::State& state) {
  static KeyedConcurrencyLimiter* limiter = new KeyedConcurrencyLimiter(10, size_t{16} << 20);
  const std::vector<uint64_t>& hashes = keys().hashes;
  size_t i = 0;
  for (auto _ : state) {
    AcquireResult r = limiter->tryAcquire(hashes[i], 0);
    benchmark::DoNotOptimize(r);
    if (++i == kLiveKeys) i = 0;
  }  // slot released at the end of each iteration
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_KeyedConcurrencyAcquireRelease);

void BM_ConcurrencyAcquireRelease(benchmark::State& state) {
  static ConcurrencyLimiter* limiter = new ConcurrencyLimiter(1000000);
  for (auto _ : state) {
    AcquireResult r = limiter->tryAcquire(0, 0);
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ConcurrencyAcquireRelease)->Threads(1)->Threads(2)->UseRealTime();

void BM_HeavyHitterRecord(benchmark::State& state) {
  static HeavyHitterSketch* sketch = new HeavyHitterSketch(HeavyHitterParams{});
  // Zipf-ish: a few hot items among 100k.
  std::vector<uint64_t> items;
  std::mt19937_64 rng(7 + static_cast<uint64_t>(state.thread_index()));
  for (int n = 0; n < 65536; ++n) {
    const uint64_t r = rng();
    items.push_back((r & 7) == 0 ? r % 100000 : r % 8);
  }
  std::vector<std::string> names;
  for (uint64_t it : items) names.push_back(std::to_string(it));
  size_t i = 0;
  Nanos now = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(sketch->record(names[i], now));
    i = (i + 1) & 65535;
    now += 1000;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HeavyHitterRecord)->Threads(1)->Threads(2)->UseRealTime();

// Collects the runs so the figures the issue asks for can be printed as one summary at the end.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      const std::string name = run.benchmark_name();
      const double ns = run.GetAdjustedRealTime() * nanosPer(run.time_unit);
      const auto items = run.counters.find("items_per_second");
      const double ips = items == run.counters.end() ? 0 : static_cast<double>(items->second);
      figures_[name] = {ns, ips};
      const auto bpk = run.counters.find("bytes_per_key");
      if (bpk != run.counters.end()) bytesPerKey_[name] = static_cast<double>(bpk->second);
    }
  }

  void printSummary() const {
    std::printf("\n== limiter decision cost (targets from issue 3) ==\n");
    const double one = ns("BM_GcraCheck1M/repeats:7/real_time/threads:1_median");
    const double ips1 = ips("BM_GcraCheck1M/repeats:7/real_time/threads:1_median");
    const double ips2 = ips("BM_GcraCheck1M/repeats:7/real_time/threads:2_median");
    std::printf("rule check, 1M live keys, 1 thread : %6.1f ns median   (target <= 60 ns)\n", one);
    std::printf("  same, keys drawn Zipf(0.99)        : %6.1f ns median\n",
                ns("BM_GcraCheck1MZipf/repeats:5_median"));
    std::printf("  same, one hot key (no cache miss)  : %6.1f ns\n", ns("BM_GcraCheckHotKey"));
    std::printf("  same, next key prefetched ahead    : %6.1f ns median\n",
                ns("BM_GcraCheck1MPrefetchedAhead/repeats:5_median"));
    std::printf("  admit(): 3 rules, 3 tables, 1M keys: %6.1f ns median per request\n",
                ns("BM_AdmitThreeRules/repeats:3_median"));
    std::printf("  same, hashing the key string       : %6.1f ns median\n",
                ns("BM_GcraCheckHashingKey/repeats:5_median"));
    std::printf("  same, nginx-compatible resolution  : %6.1f ns median\n",
                ns("BM_GcraCheckNginxMode1M/repeats:5_median"));
    std::printf("  sliding-window quota, 1M keys      : %6.1f ns median\n",
                ns("BM_SlidingWindowCheck1M/repeats:5_median"));
    std::printf("two threads, distinct keys         : %6.2fx one thread (%.1f -> %.1f M checks/s; target >= 1.6x)\n",
                ips1 > 0 ? ips2 / ips1 : 0.0, ips1 / 1e6, ips2 / 1e6);
    const auto b = bytesPerKey_.find("BM_GcraCheck1M/repeats:7/real_time/threads:1_median");
    if (b != bytesPerKey_.end()) {
      std::printf("bytes per live key (memory: 32m)   : %6.1f B      (target <= 64 B; %zu B per slot)\n",
                  b->second, KeyTable<uint64_t, 128>::bytesPerSlot());
    }
  }

 private:
  struct Figure {
    double ns = 0;
    double ips = 0;
  };
  static double nanosPer(benchmark::TimeUnit unit) {
    switch (unit) {
      case benchmark::kNanosecond:
        return 1;
      case benchmark::kMicrosecond:
        return 1e3;
      case benchmark::kMillisecond:
        return 1e6;
      default:
        return 1e9;
    }
  }
  double ns(const std::string& name) const {
    const auto it = figures_.find(name);
    return it == figures_.end() ? 0 : it->second.ns;
  }
  double ips(const std::string& name) const {
    const auto it = figures_.find(name);
    return it == figures_.end() ? 0 : it->second.ips;
  }
  std::map<std::string, Figure> figures_;
  std::map<std::string, double> bytesPerKey_;
};

}  // namespace
}  // namespace sluice::limiter

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  sluice::limiter::keys();  // build the key sets before any timing
  sluice::limiter::zipfTrace();
  sluice::limiter::SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  reporter.printSummary();
  benchmark::Shutdown();
  return 0;
}
