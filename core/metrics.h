#pragma once
// Metrics registry: counters, gauges and histograms whose label names are fixed at
// registration, rendered in the Prometheus text exposition format 0.0.4.
//
// Built for the data path. Every series owns one 64-bit cell per *shard*, one shard per thread
// that writes (each worker, plus the control thread). A thread only writes the cells of its own
// shard, so an increment is a relaxed load, an add and a relaxed store (plain movs, no lock
// prefix, no shared cache line, no allocation); a scrape sums the shards with relaxed loads.
// Series are created when a configuration is built, never per request, and the data path keeps
// the resolved per-shard handles (CounterShard, GaugeShard, HistogramShard).
//
// Cells live in fixed-size chunks that never move or shrink, so a handle stays valid as long as
// the registry. Series are never removed: a counter must not go backwards while the process
// lives, and a name that comes back after a reload continues where it left off.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

using MetricCell = std::atomic<uint64_t>;

enum class MetricType { kCounter, kGauge, kHistogram };

// Only the shard's own thread writes a cell, so read-add-write loses nothing; the atomic type
// only makes the scraper's concurrent read well-defined.
inline void metricCellAdd(MetricCell* c, uint64_t n) {
  c->store(c->load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

// One counter series as seen by one shard's thread.
class CounterShard {
 public:
  CounterShard() = default;
  explicit CounterShard(MetricCell* cell) : cell_(cell) {}
  void inc(uint64_t n = 1) const { metricCellAdd(cell_, n); }
  bool bound() const { return cell_ != nullptr; }

 private:
  MetricCell* cell_ = nullptr;
};

// One gauge series as seen by one shard's thread: its contribution to the sum over shards, so
// gauges written on the data path count things up and down (connections open, idle pool size).
class GaugeShard {
 public:
  GaugeShard() = default;
  explicit GaugeShard(MetricCell* cell) : cell_(cell) {}
  void add(int64_t d) const { metricCellAdd(cell_, static_cast<uint64_t>(d)); }
  void inc() const { add(1); }
  void dec() const { add(-1); }
  bool bound() const { return cell_ != nullptr; }

 private:
  MetricCell* cell_ = nullptr;
};

// One histogram series as seen by one shard's thread. Cells: one per bucket (not cumulative;
// the last is +Inf), then the sum. The count is the sum of the buckets, so a scrape always
// shows _count equal to the +Inf bucket.
class HistogramShard {
 public:
  HistogramShard() = default;
  HistogramShard(MetricCell* cells, const int64_t* bounds, uint32_t n)
      : cells_(cells), bounds_(bounds), n_(n) {}
  // `v` in the histogram's integer unit (nanoseconds for the *_seconds histograms).
  void observe(int64_t v) const {
    uint32_t i = 0;
    while (i < n_ && v > bounds_[i]) i++;  // small latencies are the common case: scan up
    metricCellAdd(cells_ + i, 1);
    metricCellAdd(cells_ + n_ + 1, static_cast<uint64_t>(v));
  }
  bool bound() const { return cells_ != nullptr; }

 private:
  MetricCell* cells_ = nullptr;
  const int64_t* bounds_ = nullptr;
  uint32_t n_ = 0;
};

class MetricsRegistry;

namespace metrics_detail {
struct Family;
}

// Process-wide handles to one series; `shard(i)` gives the handle thread i writes through.
class Counter {
 public:
  Counter() = default;
  CounterShard shard(size_t i) const;
  void inc(size_t shard_index, uint64_t n = 1) const { shard(shard_index).inc(n); }
  uint64_t value() const;  // sum over shards (tests, admin)

 private:
  friend class MetricsRegistry;
  friend class CounterFamily;
  Counter(const MetricsRegistry* r, uint32_t cell) : registry_(r), cell_(cell) {}
  const MetricsRegistry* registry_ = nullptr;
  uint32_t cell_ = 0;
};

class Gauge {
 public:
  Gauge() = default;
  GaugeShard shard(size_t i) const;
  void add(size_t shard_index, int64_t d) const { shard(shard_index).add(d); }
  int64_t value() const;

 private:
  friend class MetricsRegistry;
  friend class GaugeFamily;
  Gauge(const MetricsRegistry* r, uint32_t cell) : registry_(r), cell_(cell) {}
  const MetricsRegistry* registry_ = nullptr;
  uint32_t cell_ = 0;
};

class Histogram {
 public:
  Histogram() = default;
  HistogramShard shard(size_t i) const;
  void observe(size_t shard_index, int64_t v) const { shard(shard_index).observe(v); }
  uint64_t count() const;
  int64_t sum() const;  // in the histogram's integer unit

 private:
  friend class MetricsRegistry;
  friend class HistogramFamily;
  Histogram(const MetricsRegistry* r, uint32_t cell, const metrics_detail::Family* f)
      : registry_(r), cell_(cell), family_(f) {}
  const MetricsRegistry* registry_ = nullptr;
  uint32_t cell_ = 0;
  const metrics_detail::Family* family_ = nullptr;
};

// Families: `with(label values)` returns the series for those values (one per label name, in
// order), creating it on first use. It locks and may allocate: call it when a configuration is
// built, not per request.
class CounterFamily {
 public:
  Counter with(const std::vector<std::string>& label_values);

 private:
  friend class MetricsRegistry;
  CounterFamily(MetricsRegistry* r, metrics_detail::Family* f) : registry_(r), family_(f) {}
  MetricsRegistry* registry_;
  metrics_detail::Family* family_;
};

class GaugeFamily {
 public:
  Gauge with(const std::vector<std::string>& label_values);

 private:
  friend class MetricsRegistry;
  GaugeFamily(MetricsRegistry* r, metrics_detail::Family* f) : registry_(r), family_(f) {}
  MetricsRegistry* registry_;
  metrics_detail::Family* family_;
};

class HistogramFamily {
 public:
  Histogram with(const std::vector<std::string>& label_values);

 private:
  friend class MetricsRegistry;
  HistogramFamily(MetricsRegistry* r, metrics_detail::Family* f) : registry_(r), family_(f) {}
  MetricsRegistry* registry_;
  metrics_detail::Family* family_;
};

// What a callback family emits at scrape time: one sample per call, label values in the
// family's label order. A repeated label set is dropped (the format forbids duplicates).
class MetricSampleSink {
 public:
  virtual ~MetricSampleSink() = default;
  virtual void add(const std::vector<std::string_view>& label_values, double value) = 0;
  void add(double value) { add({}, value); }
};

// Latency buckets in seconds, 0.5 ms .. 10 s.
const std::vector<double>& defaultLatencyBuckets();

class MetricsRegistry {
 public:
  static constexpr size_t kChunkCells = 4096;  // 32 KiB per shard per chunk
  static constexpr size_t kMaxChunks = 1024;   // 4 Mi cells per shard at most

  explicit MetricsRegistry(size_t shards);
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;
  size_t shardCount() const { return shards_.size(); }

  // Metric names match [a-zA-Z_:][a-zA-Z0-9_:]* and counters end in `_total`; label names match
  // [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__", are distinct, and `le` belongs to
  // histograms. Registering a name again with the same type, labels (and buckets) returns the
  // same family; anything else throws std::invalid_argument: these are programming errors the
  // unit tests catch, never something the data path meets.
  CounterFamily counter(const std::string& name, const std::string& help,
                        std::vector<std::string> labels = {});
  GaugeFamily gauge(const std::string& name, const std::string& help,
                    std::vector<std::string> labels = {});
  // `bounds`: increasing upper bounds as exported (e.g. seconds); `scale` converts them to the
  // integer unit observe() takes (1e9 for seconds observed in nanoseconds).
  HistogramFamily histogram(const std::string& name, const std::string& help,
                            std::vector<std::string> labels, std::vector<double> bounds,
                            double scale);
  // Seconds observed as nanoseconds, with defaultLatencyBuckets().
  HistogramFamily latencyHistogram(const std::string& name, const std::string& help,
                                   std::vector<std::string> labels = {});
  // A counter or gauge family whose samples are computed at scrape time, on the scraping thread,
  // from state that lives elsewhere (health atomics, reload counts, /proc). The callback must
  // not call back into the registry.
  void callback(const std::string& name, const std::string& help, MetricType type,
                std::vector<std::string> labels, std::function<void(MetricSampleSink&)> collect);

  // Text exposition format 0.0.4, families in registration order.
  std::string render() const;

 private:
  friend class Counter;
  friend class Gauge;
  friend class Histogram;
  friend class CounterFamily;
  friend class GaugeFamily;
  friend class HistogramFamily;
  struct alignas(64) Chunk {
    MetricCell cells[kChunkCells];
  };
  struct Shard {
    std::unique_ptr<std::unique_ptr<Chunk>[]> chunks;  // kMaxChunks slots, filled in order
  };

  metrics_detail::Family* add(std::unique_ptr<metrics_detail::Family> f);
  uint32_t seriesCell(metrics_detail::Family* f, const std::vector<std::string>& values);
  uint32_t allocCells(uint32_t n);  // contiguous within one chunk; mu_ held
  MetricCell* cell(size_t shard, uint32_t index) const {
    return &shards_[shard].chunks[index / kChunkCells]->cells[index % kChunkCells];
  }
  uint64_t sumCell(uint32_t index) const;

  mutable std::mutex mu_;
  std::vector<Shard> shards_;
  std::vector<std::unique_ptr<metrics_detail::Family>> families_;
  uint32_t next_cell_ = 0;  // next free cell index (same layout in every shard)
  uint32_t chunks_ = 0;     // chunks allocated per shard
};

// Prometheus text-format escaping, exposed for tests.
std::string escapeMetricLabelValue(std::string_view v);
std::string escapeMetricHelp(std::string_view v);
// A sample value as the format writes it: integers without a fraction, "+Inf", "-Inf", "NaN".
std::string formatMetricValue(double v);

}  // namespace sluice
