#include "proxy/server/explain_log.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cstring>
#include <string_view>

#include "core/hash.h"

namespace sluice {

namespace {

// Never 0, so a cell nobody wrote (all zero) never checks out.
uint64_t checkOf(const uint64_t* w, size_t words) {
  return hash64(std::string_view(reinterpret_cast<const char*>(w), words * 8), 0x6578706c61696eULL) | 1;
}

// Streamed: the data path never reads a record back, so whole lines go to memory without first
// being read for ownership, and they do not evict lines the proxy uses.
inline void streamWord(uint64_t* p, uint64_t v) {
#if defined(__x86_64__)
  _mm_stream_si64(reinterpret_cast<long long*>(p), static_cast<long long>(v));
#else
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
#endif
}

}  // namespace

ExplainLog::ExplainLog() : id_([] {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}()) {}

ExplainLog::Ring& ExplainLog::mine() {
  // Per (log, thread): the runtime holds one log for the process; tests build their own, one
  // after another, maybe at the same address, so the log is told by its id, not its address.
  thread_local uint64_t owner = 0;
  thread_local Ring* ring = nullptr;
  if (owner != id_) {
    std::lock_guard<std::mutex> lk(mu_);
    rings_.push_back(std::make_unique<Ring>());
    ring = rings_.back().get();
    owner = id_;
  }
  return *ring;
}

void ExplainLog::append(const ExplainRecord& record) {
  Ring& r = mine();
  uint64_t w[kWords];
  std::memcpy(w, &record, sizeof record);
  uint32_t staged = r.staged.load(std::memory_order_relaxed);
  if (staged == kStageRecords) {
    // Stream the stage to the ring first: `next` moves before a stage cell is reused, so a reader
    // (stage first, then ring) finds every record in one or the other.
    const uint64_t n = r.next.load(std::memory_order_relaxed);
    for (uint32_t i = 0; i < kStageRecords; ++i) {
      Cell& c = r.cells[(n + i) % kRingRecords];
      for (size_t j = 0; j <= kWords; ++j)
        streamWord(&c.w[j], __atomic_load_n(&r.stage[i].w[j], __ATOMIC_RELAXED));
    }
#if defined(__x86_64__)
    // Streamed stores are weakly ordered: without the fence a reader could see `next` move
    // before the records arrive, and miss the one about to be overwritten in the stage. One
    // fence per stage, not per record.
    _mm_sfence();
#endif
    r.next.store(n + kStageRecords, std::memory_order_release);
    staged = 0;
  }
  // Relaxed atomic stores are plain moves; a reader racing them sees a check word that does not
  // match and skips the cell.
  Cell& c = r.stage[staged];
  for (size_t i = 0; i < kWords; ++i) __atomic_store_n(&c.w[i], w[i], __ATOMIC_RELAXED);
  __atomic_store_n(&c.w[kWords], checkOf(w, kWords), __ATOMIC_RELAXED);
  r.staged.store(staged + 1, std::memory_order_release);
}

bool ExplainLog::readCell(const Cell& c, ExplainRecord* out) {
  uint64_t w[kWords];
  for (size_t i = 0; i < kWords; ++i) w[i] = __atomic_load_n(&c.w[i], __ATOMIC_RELAXED);
  if (__atomic_load_n(&c.w[kWords], __ATOMIC_RELAXED) != checkOf(w, kWords)) return false;  // torn
  std::memcpy(out, w, sizeof *out);
  return true;
}

bool ExplainLog::newest(const Cell* cells, size_t size, uint64_t n, int kind, uint64_t key,
                        ExplainRecord* out) {
  const uint64_t oldest = n > size ? n - size : 0;
  for (uint64_t i = n; i > oldest; --i) {  // newest first: the first match is the newest
    const Cell& c = cells[(i - 1) % size];
    if (__atomic_load_n(&c.w[kind], __ATOMIC_RELAXED) != key) continue;
    if (readCell(c, out) && out->keys[kind] == key) return true;
  }
  return false;
}

bool ExplainLog::find(int kind, uint64_t key, ExplainRecord* out) const {
  if (key == 0 || kind < 0 || kind >= risk::kEntityKinds) return false;
  std::lock_guard<std::mutex> lk(mu_);
  bool found = false;
  auto take = [&](const ExplainRecord& rec) {
    if (!found || rec.at > out->at) *out = rec;
    found = true;
  };
  for (const auto& ring : rings_) {
    ExplainRecord rec;
    // The stage first (see append). A stage being refilled may hold newer records than the
    // ring, and the ring's newest is not always the stage's oldest, so both are searched.
    const uint32_t staged = ring->staged.load(std::memory_order_acquire);
    if (newest(ring->stage, kStageRecords, staged, kind, key, &rec)) take(rec);
    const uint64_t n = ring->next.load(std::memory_order_acquire);
    if (newest(ring->cells.get(), kRingRecords, n, kind, key, &rec)) take(rec);
  }
  return found;
}

}  // namespace sluice
