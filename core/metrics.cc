#include "core/metrics.h"

#include <charconv>
#include <cmath>
#include <set>
#include <stdexcept>

namespace sluice {

namespace metrics_detail {

struct Family {
  std::string name;
  std::string help;
  MetricType type = MetricType::kCounter;
  std::vector<std::string> labels;
  // Histograms: exported bounds, the same in observe()'s integer unit, and that unit's scale.
  std::vector<double> bounds;
  std::vector<int64_t> int_bounds;
  double scale = 1;
  uint32_t cells_per_series = 1;
  // Label values -> first cell; a map so a scrape lists series in a stable, sorted order.
  std::map<std::vector<std::string>, uint32_t> series;
  std::function<void(MetricSampleSink&)> collect;  // set for callback families
};

}  // namespace metrics_detail

using metrics_detail::Family;

namespace {

bool isMetricName(std::string_view s) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); i++) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

bool isLabelName(std::string_view s) {
  if (s.empty() || s.substr(0, 2) == "__") return false;
  for (size_t i = 0; i < s.size(); i++) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

const char* typeName(MetricType t) {
  switch (t) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

void validate(const std::string& name, MetricType type, const std::vector<std::string>& labels) {
  if (!isMetricName(name)) throw std::invalid_argument("invalid metric name '" + name + "'");
  if (type == MetricType::kCounter && !endsWith(name, "_total"))
    throw std::invalid_argument("counter '" + name + "' must end in _total");
  if (type != MetricType::kCounter && endsWith(name, "_total"))
    throw std::invalid_argument("only counters end in _total: '" + name + "'");
  std::set<std::string> seen;
  for (const auto& l : labels) {
    if (!isLabelName(l)) throw std::invalid_argument(name + ": invalid label name '" + l + "'");
    if (l == "le" && type == MetricType::kHistogram)
      throw std::invalid_argument(name + ": 'le' is reserved for histogram buckets");
    if (!seen.insert(l).second) throw std::invalid_argument(name + ": duplicate label '" + l + "'");
  }
}

// `a="x",b="y"`: no braces, so a histogram can append its le label.
void appendLabels(std::string* out, const std::vector<std::string>& names,
                  const std::vector<std::string_view>& values) {
  for (size_t i = 0; i < names.size(); i++) {
    if (i) out->push_back(',');
    out->append(names[i]);
    out->append("=\"");
    out->append(escapeMetricLabelValue(values[i]));
    out->push_back('"');
  }
}

void appendSample(std::string* out, std::string_view name, std::string_view labels,
                  std::string_view value) {
  out->append(name);
  if (!labels.empty()) {
    out->push_back('{');
    out->append(labels);
    out->push_back('}');
  }
  out->push_back(' ');
  out->append(value);
  out->push_back('\n');
}

std::string formatUint(uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

std::string formatInt(int64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

class LineSink final : public MetricSampleSink {
 public:
  LineSink(const Family& f, std::string* out) : f_(f), out_(out) {}
  using MetricSampleSink::add;
  void add(const std::vector<std::string_view>& values, double v) override {
    if (values.size() != f_.labels.size()) return;  // a programming error; keep the text valid
    std::string labels;
    appendLabels(&labels, f_.labels, values);
    if (!seen_.insert(labels).second) return;
    appendSample(out_, f_.name, labels, formatMetricValue(v));
  }

 private:
  const Family& f_;
  std::string* out_;
  std::set<std::string> seen_;
};

}  // namespace

std::string escapeMetricLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out.push_back(c);
  }
  return out;
}

std::string escapeMetricHelp(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out.push_back(c);
  }
  return out;
}

std::string formatMetricValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::trunc(v) && std::fabs(v) < 9007199254740992.0)
    return formatInt(static_cast<int64_t>(v));
  char buf[32];
  // The shortest form that reads back exactly; fixed notation in the range people read
  // ("0.0005", "1712345678.25"), exponents only outside it.
  double a = std::fabs(v);
  auto fmt = a >= 1e-4 && a < 1e15 ? std::chars_format::fixed : std::chars_format::general;
  auto r = std::to_chars(buf, buf + sizeof(buf), v, fmt);
  return std::string(buf, r.ptr);
}

const std::vector<double>& defaultLatencyBuckets() {
  static const std::vector<double> b = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1,     2.5,  5,     10};
  return b;
}

// ---------------------------------------------------------------------------------------------
// Handles

CounterShard Counter::shard(size_t i) const { return CounterShard(registry_->cell(i, cell_)); }

uint64_t Counter::value() const { return registry_->sumCell(cell_); }

GaugeShard Gauge::shard(size_t i) const { return GaugeShard(registry_->cell(i, cell_)); }

int64_t Gauge::value() const { return static_cast<int64_t>(registry_->sumCell(cell_)); }

HistogramShard Histogram::shard(size_t i) const {
  return HistogramShard(registry_->cell(i, cell_), family_->int_bounds.data(),
                        static_cast<uint32_t>(family_->int_bounds.size()));
}

uint64_t Histogram::count() const {
  uint64_t n = 0;
  for (size_t b = 0; b <= family_->int_bounds.size(); b++)
    n += registry_->sumCell(cell_ + static_cast<uint32_t>(b));
  return n;
}

int64_t Histogram::sum() const {
  return static_cast<int64_t>(
      registry_->sumCell(cell_ + static_cast<uint32_t>(family_->int_bounds.size()) + 1));
}

Counter CounterFamily::with(const std::vector<std::string>& values) {
  return Counter(registry_, registry_->seriesCell(family_, values));
}

Gauge GaugeFamily::with(const std::vector<std::string>& values) {
  return Gauge(registry_, registry_->seriesCell(family_, values));
}

Histogram HistogramFamily::with(const std::vector<std::string>& values) {
  return Histogram(registry_, registry_->seriesCell(family_, values), family_);
}

// ---------------------------------------------------------------------------------------------
// Registry

MetricsRegistry::MetricsRegistry(size_t shards) : shards_(shards == 0 ? 1 : shards) {
  for (auto& s : shards_) s.chunks = std::make_unique<std::unique_ptr<Chunk>[]>(kMaxChunks);
}

MetricsRegistry::~MetricsRegistry() = default;

Family* MetricsRegistry::add(std::unique_ptr<Family> f) {
  validate(f->name, f->type, f->labels);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& existing : families_) {
    if (existing->name != f->name) continue;
    bool same = existing->type == f->type && existing->labels == f->labels &&
                existing->bounds == f->bounds && existing->scale == f->scale &&
                !existing->collect && !f->collect;
    if (!same) throw std::invalid_argument("metric '" + f->name + "' registered twice, differently");
    return existing.get();
  }
  // A histogram's sample names must not collide with another family's.
  for (auto& existing : families_) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (existing->type == MetricType::kHistogram && existing->name + suffix == f->name)
        throw std::invalid_argument("metric '" + f->name + "' collides with histogram " + existing->name);
      if (f->type == MetricType::kHistogram && f->name + suffix == existing->name)
        throw std::invalid_argument("histogram '" + f->name + "' collides with " + existing->name);
    }
  }
  families_.push_back(std::move(f));
  return families_.back().get();
}

CounterFamily MetricsRegistry::counter(const std::string& name, const std::string& help,
                                       std::vector<std::string> labels) {
  auto f = std::make_unique<Family>();
  f->name = name;
  f->help = help;
  f->type = MetricType::kCounter;
  f->labels = std::move(labels);
  return CounterFamily(this, add(std::move(f)));
}

GaugeFamily MetricsRegistry::gauge(const std::string& name, const std::string& help,
                                   std::vector<std::string> labels) {
  auto f = std::make_unique<Family>();
  f->name = name;
  f->help = help;
  f->type = MetricType::kGauge;
  f->labels = std::move(labels);
  return GaugeFamily(this, add(std::move(f)));
}

HistogramFamily MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                           std::vector<std::string> labels,
                                           std::vector<double> bounds, double scale) {
  if (bounds.empty()) throw std::invalid_argument(name + ": a histogram needs buckets");
  if (!(scale > 0) || !std::isfinite(scale)) throw std::invalid_argument(name + ": bad scale");
  auto f = std::make_unique<Family>();
  for (size_t i = 0; i < bounds.size(); i++) {
    if (!std::isfinite(bounds[i]))
      throw std::invalid_argument(name + ": bucket bounds must be finite (+Inf is implied)");
    int64_t b = std::llround(bounds[i] * scale);
    if (i > 0 && (bounds[i] <= bounds[i - 1] || b <= f->int_bounds.back()))
      throw std::invalid_argument(name + ": bucket bounds must increase");
    f->int_bounds.push_back(b);
  }
  f->name = name;
  f->help = help;
  f->type = MetricType::kHistogram;
  f->labels = std::move(labels);
  f->bounds = std::move(bounds);
  f->scale = scale;
  f->cells_per_series = static_cast<uint32_t>(f->bounds.size()) + 2;  // buckets, +Inf, sum
  return HistogramFamily(this, add(std::move(f)));
}

HistogramFamily MetricsRegistry::latencyHistogram(const std::string& name, const std::string& help,
                                                  std::vector<std::string> labels) {
  return histogram(name, help, std::move(labels), defaultLatencyBuckets(), 1e9);
}

void MetricsRegistry::callback(const std::string& name, const std::string& help, MetricType type,
                               std::vector<std::string> labels,
                               std::function<void(MetricSampleSink&)> collect) {
  if (type == MetricType::kHistogram)
    throw std::invalid_argument(name + ": callback families are counters or gauges");
  auto f = std::make_unique<Family>();
  f->name = name;
  f->help = help;
  f->type = type;
  f->labels = std::move(labels);
  f->collect = std::move(collect);
  add(std::move(f));
}

uint32_t MetricsRegistry::seriesCell(Family* f, const std::vector<std::string>& values) {
  if (values.size() != f->labels.size())
    throw std::invalid_argument(f->name + ": expected " + std::to_string(f->labels.size()) +
                                " label values, got " + std::to_string(values.size()));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = f->series.find(values);
  if (it != f->series.end()) return it->second;
  uint32_t first = allocCells(f->cells_per_series);
  f->series.emplace(values, first);
  return first;
}

uint32_t MetricsRegistry::allocCells(uint32_t n) {
  if (n > kChunkCells) throw std::invalid_argument("metric series too large");
  uint32_t offset = next_cell_ % kChunkCells;
  if (next_cell_ == chunks_ * kChunkCells || offset + n > kChunkCells) {
    // Open a new chunk in every shard; the rest of the current one (if any) stays unused.
    if (chunks_ == kMaxChunks) throw std::length_error("metrics registry full");
    for (auto& s : shards_) s.chunks[chunks_] = std::make_unique<Chunk>();
    next_cell_ = chunks_ * static_cast<uint32_t>(kChunkCells);
    chunks_++;
  }
  uint32_t first = next_cell_;
  next_cell_ += n;
  return first;
}

uint64_t MetricsRegistry::sumCell(uint32_t index) const {
  uint64_t sum = 0;
  for (size_t s = 0; s < shards_.size(); s++) sum += cell(s, index)->load(std::memory_order_relaxed);
  return sum;
}

std::string MetricsRegistry::render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  out.reserve(4096);
  std::vector<std::string_view> views;
  for (const auto& fp : families_) {
    const Family& f = *fp;
    out.append("# HELP ");
    out.append(f.name);
    out.push_back(' ');
    out.append(escapeMetricHelp(f.help));
    out.append("\n# TYPE ");
    out.append(f.name);
    out.push_back(' ');
    out.append(typeName(f.type));
    out.push_back('\n');
    if (f.collect) {
      LineSink sink(f, &out);
      f.collect(sink);
      continue;
    }
    for (const auto& [values, first] : f.series) {
      views.assign(values.begin(), values.end());
      std::string labels;
      appendLabels(&labels, f.labels, views);
      if (f.type == MetricType::kCounter) {
        appendSample(&out, f.name, labels, formatUint(sumCell(first)));
      } else if (f.type == MetricType::kGauge) {
        appendSample(&out, f.name, labels, formatInt(static_cast<int64_t>(sumCell(first))));
      } else {
        std::string bucket_name = f.name + "_bucket";
        uint64_t cumulative = 0;
        for (size_t b = 0; b <= f.bounds.size(); b++) {
          cumulative += sumCell(first + static_cast<uint32_t>(b));
          std::string l = labels;
          if (!l.empty()) l.push_back(',');
          l += "le=\"";
          l += b < f.bounds.size() ? formatMetricValue(f.bounds[b]) : "+Inf";
          l += '"';
          appendSample(&out, bucket_name, l, formatUint(cumulative));
        }
        int64_t sum = static_cast<int64_t>(sumCell(first + static_cast<uint32_t>(f.bounds.size()) + 1));
        appendSample(&out, f.name + "_sum", labels, formatMetricValue(static_cast<double>(sum) / f.scale));
        appendSample(&out, f.name + "_count", labels, formatUint(cumulative));
      }
    }
  }
  return out;
}

}  // namespace sluice
