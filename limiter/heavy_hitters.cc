#include "limiter/heavy_hitters.h"

#include <algorithm>
#include <cmath>

#include "core/hash.h"

namespace sluice::limiter {
namespace {

constexpr size_t kMaxItemBytes = 64;

uint32_t roundUpPow2(uint32_t v) {
  uint32_t p = 1;
  while (p < v && p < (1u << 30)) p <<= 1;
  return p;
}

int64_t floorDiv(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

}  // namespace

const char* HeavyHitterParams::validate() const {
  if (subWindows < 2 || subWindows > 64) return "sub_windows must be 2..64";
  if (window < subWindows * kMillis) return "window too short for its sub-windows";
  if (depth < 1 || depth > 8) return "depth must be 1..8";
  if (width < 16 || width > (1u << 24)) return "width must be 16..16777216";
  if (topK < 1 || topK > 1024) return "top_k must be 1..1024";
  if (!(hotRate > 0)) return "hot rate must be positive";
  if (!(candidateFraction > 0 && candidateFraction <= 1)) return "candidate fraction must be in (0, 1]";
  return nullptr;
}

HeavyHitterSketch::HeavyHitterSketch(const HeavyHitterParams& params)
    : params_(params),
      subLength_(std::max<Nanos>(1, params.window / std::max<uint32_t>(1, params.subWindows))),
      widthMask_(roundUpPow2(std::max<uint32_t>(16, params.width)) - 1),
      candidateFloor_(std::max<uint64_t>(
          1, static_cast<uint64_t>(params.hotRate * (static_cast<double>(subLength_) / kSeconds) *
                                   params.candidateFraction))),
      ring_(new SubWindow[params.subWindows]),
      hotSet_(new std::atomic<uint64_t>[params.topK]) {
  const size_t cells = static_cast<size_t>(params_.depth) * (widthMask_ + 1);
  for (uint32_t i = 0; i < params_.subWindows; ++i) {
    ring_[i].counters.reset(new std::atomic<uint32_t>[cells]);
    for (size_t c = 0; c < cells; ++c) ring_[i].counters[c].store(0, std::memory_order_relaxed);
  }
  for (uint32_t i = 0; i < params_.topK; ++i) hotSet_[i].store(0, std::memory_order_relaxed);
  candidates_.reserve(params_.topK);
}

size_t HeavyHitterSketch::column(uint64_t hash, uint32_t row) const {
  // Kirsch-Mitzenmacher: row i uses h1 + i * h2, as good as independent hashes for count-min.
  const uint64_t h1 = hash;
  const uint64_t h2 = mix64(hash ^ 0x5bd1e9955bd1e995ULL) | 1;
  return static_cast<size_t>(row) * (widthMask_ + 1) + ((h1 + row * h2) >> 20 & widthMask_);
}

int64_t HeavyHitterSketch::epochOf(Nanos now) const { return floorDiv(now, subLength_); }

size_t HeavyHitterSketch::slotOf(int64_t epoch) const {
  const int64_t n = params_.subWindows;
  return static_cast<size_t>(((epoch % n) + n) % n);
}

void HeavyHitterSketch::rotate(int64_t epoch, Nanos now) {
  {
    std::lock_guard<std::mutex> lock(rotateMutex_);
    SubWindow& sw = ring_[slotOf(epoch)];
    const int64_t seen = sw.epoch.load(std::memory_order_acquire);
    if (seen >= epoch) return;  // another worker rotated first (or the caller's clock is stale)
    const size_t cells = static_cast<size_t>(params_.depth) * (widthMask_ + 1);
    for (size_t c = 0; c < cells; ++c) sw.counters[c].store(0, std::memory_order_relaxed);
    // Publish after clearing: a recorder that sees the new epoch sees zeroed counters.
    sw.epoch.store(epoch, std::memory_order_release);
  }
  // Once per sub-window: items that went quiet leave the hot set even if never recorded again.
  std::lock_guard<std::mutex> lock(topMutex_);
  refreshLocked(now);
}

bool HeavyHitterSketch::record(std::string_view item, Nanos now, uint32_t count) {
  return record(item, hash64(item), now, count);
}

bool HeavyHitterSketch::record(std::string_view item, uint64_t itemHash, Nanos now,
                               uint32_t count) {
  Nanos expected = INT64_MIN;
  if (firstRecord_.load(std::memory_order_relaxed) == INT64_MIN) {
    firstRecord_.compare_exchange_strong(expected, now, std::memory_order_relaxed);
  }
  const int64_t epoch = epochOf(now);
  SubWindow& sw = ring_[slotOf(epoch)];
  const int64_t seen = sw.epoch.load(std::memory_order_acquire);
  if (seen != epoch) {
    if (seen > epoch) return isHot(itemHash);  // a stale clock: too old to count
    rotate(epoch, now);
  }
  uint64_t current = UINT64_MAX;
  for (uint32_t row = 0; row < params_.depth; ++row) {
    const uint32_t before = sw.counters[column(itemHash, row)].fetch_add(count, std::memory_order_relaxed);
    current = std::min<uint64_t>(current, uint64_t{before} + count);
  }
  // Re-rank at the first crossing of the floor and then every 32 requests: a hot item recorded by
  // every worker must not take the top-K lock on every request.
  const uint64_t previous = current - count;
  if (current >= candidateFloor_ && (previous < candidateFloor_ || previous / 32 != current / 32)) {
    offerCandidate(item, itemHash, now);
  }
  return isHot(itemHash);
}

double HeavyHitterSketch::spanSeconds(Nanos now) const {
  // Full sub-windows behind the current one, plus the elapsed part of the current one; never more
  // than the time since the first record (a fresh sketch must not dilute its first burst).
  const Nanos currentStart = epochOf(now) * subLength_;
  Nanos span = static_cast<Nanos>(params_.subWindows - 1) * subLength_ + (now - currentStart);
  const Nanos first = firstRecord_.load(std::memory_order_relaxed);
  if (first != INT64_MIN && now - first < span) span = now - first;
  // ...but never less than one sub-window: a handful of requests in the first milliseconds after
  // a start (or a long quiet spell) is not a rate, and must not mark an item hot.
  span = std::max(span, subLength_ > 0 ? subLength_ : Nanos{1});
  return static_cast<double>(span) / kSeconds;
}

uint64_t HeavyHitterSketch::estimateCount(uint64_t itemHash, Nanos now) const {
  const int64_t epoch = epochOf(now);
  uint64_t total = 0;
  for (uint32_t i = 0; i < params_.subWindows; ++i) {
    const SubWindow& sw = ring_[i];
    const int64_t e = sw.epoch.load(std::memory_order_acquire);
    if (e > epoch || e <= epoch - static_cast<int64_t>(params_.subWindows)) continue;
    uint64_t m = UINT64_MAX;
    for (uint32_t row = 0; row < params_.depth; ++row) {
      m = std::min<uint64_t>(m, sw.counters[column(itemHash, row)].load(std::memory_order_relaxed));
    }
    total += m;  // sum of per-sub-window minima: still an upper bound, tighter than min of sums
  }
  return total;
}

double HeavyHitterSketch::estimateRate(uint64_t itemHash, Nanos now) const {
  return static_cast<double>(estimateCount(itemHash, now)) / spanSeconds(now);
}

void HeavyHitterSketch::offerCandidate(std::string_view item, uint64_t hash, Nanos now) {
  const uint64_t count = estimateCount(hash, now);
  std::lock_guard<std::mutex> lock(topMutex_);
  Candidate* slot = nullptr;
  for (Candidate& c : candidates_) {
    if (c.hash == hash) {
      slot = &c;
      break;
    }
  }
  if (slot == nullptr) {
    if (candidates_.size() < params_.topK) {
      candidates_.push_back(Candidate{hash, 0, std::string(item.substr(0, kMaxItemBytes))});
      slot = &candidates_.back();
    } else {
      // Replace the coldest candidate only if this item beats it.
      Candidate* coldest = &candidates_[0];
      for (Candidate& c : candidates_) {
        if (c.count < coldest->count) coldest = &c;
      }
      if (coldest->count >= count) return;
      *coldest = Candidate{hash, 0, std::string(item.substr(0, kMaxItemBytes))};
      slot = coldest;
    }
  }
  slot->count = count;
  const bool hot = static_cast<double>(count) >= params_.hotRate * spanSeconds(now);
  if (hot != slot->hot) {
    slot->hot = hot;
    publishHotLocked();
  }
}

void HeavyHitterSketch::refreshLocked(Nanos now) {
  const double threshold = params_.hotRate * spanSeconds(now);
  size_t kept = 0;
  for (size_t i = 0; i < candidates_.size(); ++i) {
    Candidate& c = candidates_[i];
    c.count = estimateCount(c.hash, now);
    c.hot = static_cast<double>(c.count) >= threshold;
    if (c.count == 0) continue;  // slid out of the window entirely
    if (kept != i) candidates_[kept] = std::move(c);
    ++kept;
  }
  candidates_.resize(kept);
  publishHotLocked();
}

void HeavyHitterSketch::publishHotLocked() {
  uint32_t n = 0;
  for (const Candidate& c : candidates_) {
    if (c.hot && n < params_.topK) hotSet_[n++].store(c.hash, std::memory_order_relaxed);
  }
  for (uint32_t i = n; i < params_.topK; ++i) hotSet_[i].store(0, std::memory_order_relaxed);
}

bool HeavyHitterSketch::isHot(uint64_t itemHash) const {
  if (itemHash == 0) return false;
  for (uint32_t i = 0; i < params_.topK; ++i) {
    const uint64_t h = hotSet_[i].load(std::memory_order_relaxed);
    if (h == itemHash) return true;
    if (h == 0) return false;  // the hot set is packed at the front
  }
  return false;
}

std::vector<HotItem> HeavyHitterSketch::snapshot(Nanos now, bool hotOnly) const {
  std::vector<HotItem> out;
  const double span = spanSeconds(now);
  const double threshold = params_.hotRate * span;
  {
    std::lock_guard<std::mutex> lock(topMutex_);
    out.reserve(candidates_.size());
    for (const Candidate& c : candidates_) {
      const uint64_t count = estimateCount(c.hash, now);
      const bool hot = static_cast<double>(count) >= threshold;
      if (hotOnly && !hot) continue;
      out.push_back(HotItem{c.item, c.hash, static_cast<double>(count) / span, count, hot});
    }
  }
  std::sort(out.begin(), out.end(), [](const HotItem& a, const HotItem& b) { return a.count > b.count; });
  return out;
}

std::vector<HotItem> HeavyHitterSketch::hotList(Nanos now) const { return snapshot(now, true); }
std::vector<HotItem> HeavyHitterSketch::topK(Nanos now) const { return snapshot(now, false); }

size_t HeavyHitterSketch::memoryBytes() const {
  return static_cast<size_t>(params_.subWindows) * params_.depth * (widthMask_ + 1) *
             sizeof(uint32_t) +
         params_.topK * (sizeof(Candidate) + kMaxItemBytes + sizeof(uint64_t));
}

}  // namespace sluice::limiter
