#include "core/metrics.h"

#include <catch2/catch.hpp>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace sluice {
namespace {

// ---------------------------------------------------------------------------------------------
// A strict parser of the Prometheus text exposition format 0.0.4, stricter than Prometheus
// itself where sluice's own output must be tidy: every sample belongs to a family declared by
// a preceding TYPE line, families are contiguous, counters end in _total, no comments other
// than HELP/TYPE, no timestamps, no duplicate series, histograms cumulative and closed by +Inf.

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> type
  std::map<std::string, std::string> help;   // family -> unescaped help
  std::vector<Sample> samples;

  // The value of the one sample `name` with exactly `labels`; NaN when absent.
  double value(const std::string& name, const std::map<std::string, std::string>& labels = {}) const {
    for (const auto& s : samples)
      if (s.name == name && s.labels == labels) return s.value;
    return std::nan("");
  }
  size_t count(const std::string& name) const {
    size_t n = 0;
    for (const auto& s : samples) n += s.name == name;
    return n;
  }
};

bool isNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':'; }
bool isNameChar(char c) { return isNameStart(c) || (c >= '0' && c <= '9'); }

bool validMetricName(const std::string& s) {
  if (s.empty() || !isNameStart(s[0])) return false;
  for (char c : s)
    if (!isNameChar(c)) return false;
  return true;
}

bool validLabelName(const std::string& s) {
  if (s.empty() || s[0] == ':' || !isNameStart(s[0]) || s.rfind("__", 0) == 0) return false;
  for (char c : s)
    if (!isNameChar(c) || c == ':') return false;
  return true;
}

bool parseValue(const std::string& s, double* out) {
  if (s == "+Inf") return *out = INFINITY, true;
  if (s == "-Inf") return *out = -INFINITY, true;
  if (s == "NaN") return *out = NAN, true;
  if (s.empty()) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E')) return false;
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

bool endsWith(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// The family a sample name belongs to, given the TYPE lines so far; "" if none.
std::string familyOf(const std::string& name, const std::map<std::string, std::string>& types) {
  if (types.count(name) && types.at(name) != "histogram") return name;
  for (const char* suf : {"_bucket", "_sum", "_count"}) {
    if (!endsWith(name, suf)) continue;
    std::string base = name.substr(0, name.size() - std::string(suf).size());
    auto it = types.find(base);
    if (it != types.end() && it->second == "histogram") return base;
  }
  return "";
}

bool checkHistograms(const Exposition& e, std::string* err) {
  for (const auto& [family, type] : e.types) {
    if (type != "histogram") continue;
    // Series key: labels without le.
    std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> buckets;
    std::map<std::map<std::string, std::string>, double> counts, sums;
    for (const auto& s : e.samples) {
      auto labels = s.labels;
      if (s.name == family + "_bucket") {
        double le;
        if (!parseValue(labels["le"], &le)) return *err = family + ": bad le", false;
        labels.erase("le");
        buckets[labels].emplace_back(le, s.value);
      } else if (s.name == family + "_count") {
        counts[labels] = s.value;
      } else if (s.name == family + "_sum") {
        sums[labels] = s.value;
      }
    }
    for (const auto& [labels, bs] : buckets) {
      if (bs.empty() || !std::isinf(bs.back().first) || bs.back().first < 0)
        return *err = family + ": buckets do not end in +Inf", false;
      for (size_t i = 1; i < bs.size(); i++) {
        if (!(bs[i].first > bs[i - 1].first)) return *err = family + ": le not increasing", false;
        if (bs[i].second < bs[i - 1].second) return *err = family + ": buckets not cumulative", false;
      }
      if (!counts.count(labels)) return *err = family + ": no _count", false;
      if (!sums.count(labels)) return *err = family + ": no _sum", false;
      if (counts[labels] != bs.back().second) return *err = family + ": +Inf bucket != _count", false;
    }
    for (const auto& [labels, c] : counts)
      if (!buckets.count(labels)) return *err = family + ": _count without buckets", false;
  }
  return true;
}

bool parseExposition(const std::string& text, Exposition* out, std::string* err) {
  if (!text.empty() && text.back() != '\n') return *err = "does not end in a newline", false;
  std::set<std::string> closed;  // families whose lines are over
  std::string current;           // family of the previous line
  std::set<std::string> series;  // name + labels, for duplicates
  size_t pos = 0;
  int lineno = 0;
  auto fail = [&](const std::string& why) {
    *err = "line " + std::to_string(lineno) + ": " + why;
    return false;
  };
  auto enter = [&](const std::string& family) {
    if (family == current) return true;
    if (closed.count(family)) return false;  // a family's lines must be contiguous
    if (!current.empty()) closed.insert(current);
    current = family;
    return true;
  };
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    lineno++;
    if (line.empty()) return fail("empty line");
    if (line[0] == '#') {
      bool is_help = line.rfind("# HELP ", 0) == 0, is_type = line.rfind("# TYPE ", 0) == 0;
      if (!is_help && !is_type) return fail("comment other than HELP/TYPE");
      std::string rest = line.substr(7);
      size_t sp = rest.find(' ');
      if (sp == std::string::npos) return fail("metadata without text");
      std::string name = rest.substr(0, sp), arg = rest.substr(sp + 1);
      if (!validMetricName(name)) return fail("bad metric name '" + name + "'");
      if (!enter(name)) return fail("family " + name + " is not contiguous");
      if (is_help) {
        if (out->help.count(name)) return fail("second HELP for " + name);
        std::string h;
        for (size_t i = 0; i < arg.size(); i++) {
          if (arg[i] != '\\') {
            h.push_back(arg[i]);
            continue;
          }
          if (++i == arg.size()) return fail("dangling escape in HELP");
          if (arg[i] == '\\') h.push_back('\\');
          else if (arg[i] == 'n') h.push_back('\n');
          else return fail("bad escape in HELP");
        }
        out->help[name] = h;
      } else {
        if (out->types.count(name)) return fail("second TYPE for " + name);
        if (arg != "counter" && arg != "gauge" && arg != "histogram")
          return fail("unexpected type '" + arg + "'");
        for (const auto& s : out->samples)
          if (familyOf(s.name, {{name, arg}}) == name) return fail("TYPE after samples of " + name);
        out->types[name] = arg;
      }
      continue;
    }
    Sample s;
    size_t i = 0;
    while (i < line.size() && line[i] != '{' && line[i] != ' ') i++;
    s.name = line.substr(0, i);
    if (!validMetricName(s.name)) return fail("bad metric name '" + s.name + "'");
    if (i < line.size() && line[i] == '{') {
      i++;
      while (true) {
        size_t eq = line.find('=', i);
        if (eq == std::string::npos) return fail("label without '='");
        std::string lname = line.substr(i, eq - i);
        if (!validLabelName(lname)) return fail("bad label name '" + lname + "'");
        i = eq + 1;
        if (i >= line.size() || line[i] != '"') return fail("label value not quoted");
        i++;
        std::string v;
        bool closed_quote = false;
        for (; i < line.size(); i++) {
          char c = line[i];
          if (c == '"') {
            closed_quote = true;
            i++;
            break;
          }
          if (c == '\\') {
            if (++i == line.size()) return fail("dangling escape");
            if (line[i] == '\\') v.push_back('\\');
            else if (line[i] == '"') v.push_back('"');
            else if (line[i] == 'n') v.push_back('\n');
            else return fail("bad escape in label value");
          } else {
            v.push_back(c);
          }
        }
        if (!closed_quote) return fail("unterminated label value");
        if (!s.labels.emplace(lname, v).second) return fail("repeated label " + lname);
        if (i < line.size() && line[i] == ',') {
          i++;
          if (i < line.size() && line[i] == '}') return fail("trailing comma");
          continue;
        }
        if (i < line.size() && line[i] == '}') {
          i++;
          break;
        }
        return fail("bad label list");
      }
    }
    if (i >= line.size() || line[i] != ' ') return fail("no space before the value");
    std::string value = line.substr(i + 1);
    if (value.find(' ') != std::string::npos) return fail("timestamps or extra fields");
    if (!parseValue(value, &s.value)) return fail("bad value '" + value + "'");
    std::string family = familyOf(s.name, out->types);
    if (family.empty()) return fail("sample " + s.name + " has no preceding TYPE");
    if (!enter(family)) return fail("family " + family + " is not contiguous");
    const std::string& type = out->types[family];
    if (type == "counter" && (!endsWith(s.name, "_total") || !(s.value >= 0)))
      return fail("counter " + s.name + " must end in _total and be >= 0");
    bool bucket = type == "histogram" && s.name == family + "_bucket";
    if (bucket != (s.labels.count("le") == 1)) return fail("le label misplaced on " + s.name);
    std::string key = s.name;
    for (const auto& [k, v] : s.labels) key += "|" + k + "=" + v;
    if (!series.insert(key).second) return fail("duplicate series " + key);
    out->samples.push_back(std::move(s));
  }
  return checkHistograms(*out, err);
}

Exposition parse(const std::string& text) {
  Exposition e;
  std::string err;
  bool ok = parseExposition(text, &e, &err);
  INFO(text);
  INFO(err);
  REQUIRE(ok);
  return e;
}

bool rejects(const std::string& text) {
  Exposition e;
  std::string err;
  return !parseExposition(text, &e, &err);
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("the strict exposition parser rejects what the format forbids", "[core][metrics]") {
  CHECK_FALSE(rejects("# TYPE a_total counter\na_total 1\n"));
  CHECK(rejects("a_total 1\n"));                                        // no TYPE
  CHECK(rejects("# TYPE a_total counter\na_total 1"));                  // no final newline
  CHECK(rejects("# TYPE a_total counter\na_total{x=\"1\"} 1\n# TYPE b gauge\nb 1\na_total 2\n"));
  CHECK(rejects("# TYPE 1a gauge\n1a 1\n"));                            // bad name
  CHECK(rejects("# TYPE a gauge\na{1x=\"1\"} 1\n"));                    // bad label name
  CHECK(rejects("# TYPE a gauge\na{__x=\"1\"} 1\n"));                   // reserved label name
  CHECK(rejects("# TYPE a gauge\na{x=\"a\"b\"} 1\n"));                  // unescaped quote
  CHECK(rejects("# TYPE a gauge\na{x=\"\\t\"} 1\n"));                   // unknown escape
  CHECK(rejects("# TYPE a gauge\na{x=\"1\",} 1\n"));                    // trailing comma
  CHECK(rejects("# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n"));       // duplicate series
  CHECK(rejects("# TYPE a gauge\na one\n"));                            // bad value
  CHECK(rejects("# TYPE a counter\na 1\n"));                            // counter without _total
  CHECK(rejects("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
                "h_sum 1\nh_count 1\n"));                               // not cumulative
  CHECK(rejects("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n"));  // no +Inf
  CHECK(rejects("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n"));  // count
  CHECK(rejects("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n"));  // no _sum
  CHECK_FALSE(rejects("# TYPE h histogram\nh_bucket{le=\"0.5\"} 0\nh_bucket{le=\"+Inf\"} 1\n"
                      "h_sum 1\nh_count 1\n"));
}

TEST_CASE("counters render with HELP, TYPE and escaped labels", "[core][metrics]") {
  MetricsRegistry r(2);
  auto fam = r.counter("test_requests_total", "Requests.\nSecond line with a \\ backslash.",
                       {"route", "code_class"});
  Counter a = fam.with({"shop", "2xx"});
  Counter b = fam.with({"we\"ird\\na\nme", "5xx"});
  a.inc(0, 3);
  a.inc(1, 4);
  b.inc(1);
  std::string text = r.render();
  CHECK(text.find("# HELP test_requests_total Requests.\\nSecond line with a \\\\ backslash.\n"
                  "# TYPE test_requests_total counter\n") == 0);
  CHECK(text.find("test_requests_total{route=\"shop\",code_class=\"2xx\"} 7\n") != std::string::npos);
  CHECK(text.find("test_requests_total{route=\"we\\\"ird\\\\na\\nme\",code_class=\"5xx\"} 1\n") !=
        std::string::npos);
  auto e = parse(text);
  CHECK(e.value("test_requests_total", {{"route", "shop"}, {"code_class", "2xx"}}) == 7);
  CHECK(e.value("test_requests_total", {{"route", "we\"ird\\na\nme"}, {"code_class", "5xx"}}) == 1);
  CHECK(e.help["test_requests_total"] == "Requests.\nSecond line with a \\ backslash.");
  CHECK(a.value() == 7);
}

TEST_CASE("the same label values give the same series", "[core][metrics]") {
  MetricsRegistry r(1);
  auto fam = r.counter("x_total", "x", {"k"});
  fam.with({"a"}).inc(0, 2);
  fam.with({"a"}).inc(0, 3);
  // Registering the family again (as a new generation does) finds the same series.
  r.counter("x_total", "x", {"k"}).with({"a"}).inc(0);
  CHECK(fam.with({"a"}).value() == 6);
  auto e = parse(r.render());
  CHECK(e.count("x_total") == 1);
}

TEST_CASE("gauges sum their shards and may go down", "[core][metrics]") {
  MetricsRegistry r(3);
  Gauge g = r.gauge("conns_open", "open").with({});
  g.add(0, 5);
  g.add(1, 2);
  g.add(2, -4);  // a shard's own contribution may be negative (closed what another opened)
  CHECK(g.value() == 3);
  g.add(0, -5);
  auto e = parse(r.render());
  CHECK(e.value("conns_open") == -2);
  CHECK(r.render().find("conns_open -2\n") != std::string::npos);
}

TEST_CASE("histograms: cumulative buckets, +Inf equals count, sum in seconds", "[core][metrics]") {
  MetricsRegistry r(2);
  Histogram h = r.latencyHistogram("lat_seconds", "latency", {"route"}).with({"shop"});
  const int64_t ms = 1000000;
  h.observe(0, ms / 2);   // exactly 0.0005: le is inclusive
  h.observe(0, ms / 2 + 1);
  h.observe(1, 3 * ms);
  h.observe(1, 20 * 1000 * ms);  // 20 s: only +Inf
  CHECK(h.count() == 4);
  auto e = parse(r.render());
  auto le = [&](const char* b) { return e.value("lat_seconds_bucket", {{"route", "shop"}, {"le", b}}); };
  CHECK(le("0.0005") == 1);
  CHECK(le("0.001") == 2);
  CHECK(le("0.0025") == 2);
  CHECK(le("0.005") == 3);
  CHECK(le("10") == 3);
  CHECK(le("+Inf") == 4);
  CHECK(e.value("lat_seconds_count", {{"route", "shop"}}) == 4);
  CHECK(e.value("lat_seconds_sum", {{"route", "shop"}}) == Approx(20.004000001));
  CHECK(e.count("lat_seconds_bucket") == defaultLatencyBuckets().size() + 1);
}

TEST_CASE("histograms with their own unit and buckets", "[core][metrics]") {
  MetricsRegistry r(1);
  Histogram h = r.histogram("score", "risk score", {}, {10, 50, 90}, 1).with({});
  for (int v : {0, 10, 11, 50, 95, 100}) h.observe(0, v);
  auto e = parse(r.render());
  CHECK(e.value("score_bucket", {{"le", "10"}}) == 2);
  CHECK(e.value("score_bucket", {{"le", "50"}}) == 4);
  CHECK(e.value("score_bucket", {{"le", "90"}}) == 4);
  CHECK(e.value("score_bucket", {{"le", "+Inf"}}) == 6);
  CHECK(e.value("score_sum") == 266);
}

TEST_CASE("callback families are computed at scrape time", "[core][metrics]") {
  MetricsRegistry r(1);
  int healthy = 1;
  r.callback("srv_healthy", "health", MetricType::kGauge, {"server"}, [&](MetricSampleSink& s) {
    s.add({"a:1"}, healthy);
    s.add({"a:1"}, 7);        // a repeated label set is dropped
    s.add({"b:2", "x"}, 1);   // so is a wrong label count
    s.add({"b:2"}, 0.25);
  });
  r.callback("started_seconds", "start", MetricType::kGauge, {},
             [](MetricSampleSink& s) { s.add(1712345678.5); });
  auto e = parse(r.render());
  CHECK(e.value("srv_healthy", {{"server", "a:1"}}) == 1);
  CHECK(e.value("srv_healthy", {{"server", "b:2"}}) == 0.25);
  CHECK(e.count("srv_healthy") == 2);
  CHECK(e.value("started_seconds") == 1712345678.5);
  healthy = 0;
  CHECK(parse(r.render()).value("srv_healthy", {{"server", "a:1"}}) == 0);
}

TEST_CASE("registration refuses what would break the format", "[core][metrics]") {
  MetricsRegistry r(1);
  CHECK_THROWS_AS(r.counter("bad-name_total", "x"), std::invalid_argument);
  CHECK_THROWS_AS(r.counter("9lives_total", "x"), std::invalid_argument);
  CHECK_THROWS_AS(r.counter("requests", "x"), std::invalid_argument);        // no _total
  CHECK_THROWS_AS(r.gauge("open_total", "x"), std::invalid_argument);        // only counters
  CHECK_THROWS_AS(r.gauge("g", "x", {"a", "a"}), std::invalid_argument);     // duplicate label
  CHECK_THROWS_AS(r.gauge("g", "x", {"__a"}), std::invalid_argument);        // reserved
  CHECK_THROWS_AS(r.gauge("g", "x", {"a:b"}), std::invalid_argument);        // no ':' in labels
  CHECK_THROWS_AS(r.latencyHistogram("h_seconds", "x", {"le"}), std::invalid_argument);
  CHECK_THROWS_AS(r.histogram("h2", "x", {}, {1, 1}, 1), std::invalid_argument);
  CHECK_THROWS_AS(r.histogram("h3", "x", {}, {}, 1), std::invalid_argument);
  r.counter("c_total", "x", {"a"});
  CHECK_THROWS_AS(r.counter("c_total", "x", {"b"}), std::invalid_argument);
  CHECK_THROWS_AS(r.gauge("c_total", "x", {"a"}), std::invalid_argument);
  CHECK_THROWS_AS(r.counter("c_total", "x", {"a"}).with({}), std::invalid_argument);
  r.latencyHistogram("d_seconds", "x");
  CHECK_THROWS_AS(r.gauge("d_seconds_count", "x"), std::invalid_argument);
  parse(r.render());
}

TEST_CASE("values format as the text format expects", "[core][metrics]") {
  CHECK(formatMetricValue(0) == "0");
  CHECK(formatMetricValue(42) == "42");
  CHECK(formatMetricValue(-3) == "-3");
  CHECK(formatMetricValue(0.0005) == "0.0005");
  CHECK(formatMetricValue(2.5) == "2.5");
  CHECK(formatMetricValue(1795325953.491952) == "1795325953.491952");
  CHECK(formatMetricValue(0.000085202) == "8.5202e-05");
  CHECK(formatMetricValue(INFINITY) == "+Inf");
  CHECK(formatMetricValue(-INFINITY) == "-Inf");
  CHECK(formatMetricValue(NAN) == "NaN");
  CHECK(escapeMetricLabelValue("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
  CHECK(escapeMetricHelp("a\"b\\c\nd") == "a\"b\\\\c\\nd");
}

TEST_CASE("series past one chunk keep their handles valid", "[core][metrics]") {
  MetricsRegistry r(2);
  auto fam = r.latencyHistogram("many_seconds", "x", {"i"});
  std::vector<Histogram> hs;
  // 16 cells per series: 1000 series span four chunks, each series inside one chunk.
  for (int i = 0; i < 1000; i++) hs.push_back(fam.with({std::to_string(i)}));
  for (int i = 0; i < 1000; i++) hs[i].observe(i % 2, i * 1000);
  for (int i = 0; i < 1000; i++) {
    CHECK(hs[i].count() == 1);
    CHECK(hs[i].sum() == i * 1000);
  }
  auto e = parse(r.render());
  CHECK(e.count("many_seconds_count") == 1000);
}

TEST_CASE("two threads incrementing their own shards: exact totals, valid scrapes meanwhile",
          "[core][metrics]") {
  MetricsRegistry r(3);  // shards 0 and 1 for the threads, 2 for this one
  Counter c = r.counter("work_total", "work", {"kind"}).with({"a"});
  Gauge g = r.gauge("inflight", "in flight").with({});
  Histogram h = r.latencyHistogram("op_seconds", "op").with({});
  constexpr int kPerThread = 500000;
  std::atomic<int> started{0};
  auto worker = [&](size_t shard) {
    CounterShard cs = c.shard(shard);
    GaugeShard gs = g.shard(shard);
    HistogramShard hs = h.shard(shard);
    started++;
    for (int i = 0; i < kPerThread; i++) {
      cs.inc();
      gs.inc();
      hs.observe((i % 7) * 1000000);
      gs.dec();
    }
  };
  std::thread t0(worker, 0), t1(worker, 1);
  while (started < 2) std::this_thread::yield();
  // Scrapes while both write: always valid text, counters never go backwards.
  double last = 0;
  for (int i = 0; i < 50; i++) {
    auto e = parse(r.render());
    double v = e.value("work_total", {{"kind", "a"}});
    CHECK(v >= last);
    last = v;
  }
  // New series (and chunks: 16 cells each) registered while the others are being written.
  auto fam = r.latencyHistogram("late_seconds", "late", {"i"});
  for (int i = 0; i < 600; i++) fam.with({std::to_string(i)}).observe(2, i);
  t0.join();
  t1.join();
  CHECK(c.value() == 2u * kPerThread);
  CHECK(g.value() == 0);
  CHECK(h.count() == 2u * kPerThread);
  auto e = parse(r.render());
  CHECK(e.value("work_total", {{"kind", "a"}}) == 2.0 * kPerThread);
  CHECK(e.value("op_seconds_count") == 2.0 * kPerThread);
  CHECK(e.count("late_seconds_count") == 600);
}

}  // namespace
}  // namespace sluice
