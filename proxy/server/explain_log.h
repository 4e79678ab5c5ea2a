#pragma once
// ExplainLog: the recent risk decisions GET /risk/explain answers from ("why was member X
// challenged"): each worker appends a decision's record to its own ring, once per decision with
// the keys of all three entities, and a reader finds the newest record naming an entity.
//
// Why: the data path writes one record per decision (not one per entity), with plain stores to
// a small per-worker stage that stays in cache, and moves the stage to the ring 32 records at a
// time with streamed stores, so one wait for the stores to reach memory is shared by 32
// decisions. The design before (a cache slot per entity, every record streamed to its slot) cost
// 0.15 us per request on bench/risk-e2e: the next locked instruction after the streamed stores
// waited for them to drain, whether they were three random records or one sequential one. The
// price is on the reader: a scan of every ring, newest first (about a millisecond for 1.5 MB per
// worker), on an admin call.
//
// Retention is the last kRingRecords decisions recorded per worker. Decisions are recorded only
// when an entity's score or action changed or its record aged past the refresh
// (risk::RiskDecision::explainDue), so a busy entity does not flood the ring.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "risk/behaviour.h"

namespace sluice {

struct ExplainTop {
  char name[27] = {};  // NUL-terminated: signal and rule names longer than 26 bytes are cut
  int8_t points = 0;
};

struct ExplainRecord {
  uint64_t keys[risk::kEntityKinds] = {};  // the entities this decision was recorded for (0 = not)
  int64_t at = 0;                          // monotonic ns: orders records across workers
  uint32_t wall = 0;                       // unix seconds
  int16_t score = 0;
  int16_t request_score = 0;
  uint8_t count = 0;   // entries of top
  uint8_t action = 0;  // index into risk::kExplainActionNames
  uint8_t reserved[2] = {};
  ExplainTop top[5];
};
// 23 words and a check word: three whole cache lines per record.
static_assert(sizeof(ExplainRecord) == 23 * 8, "ExplainRecord must stay 23 words");

class ExplainLog {
 public:
  static constexpr size_t kRingRecords = 8192;  // per worker: 1.5 MB
  static constexpr size_t kStageRecords = 32;   // per worker: 6 KB

  ExplainLog();

  // Appends to the calling thread's ring (created on its first record). Only that thread writes
  // it, so no lock: a reader that races the write sees a record whose check word does not match
  // its words and skips it.
  void append(const ExplainRecord& record);

  // The newest record (largest `at`) whose keys[kind] is `key`, from every thread's ring.
  bool find(int kind, uint64_t key, ExplainRecord* out) const;

 private:
  static constexpr size_t kWords = sizeof(ExplainRecord) / 8;
  struct alignas(64) Cell {
    uint64_t w[kWords + 1] = {};
  };
  static_assert(sizeof(Cell) == 192);
  struct Ring {
    // Records land here first, with plain stores to lines that stay in cache, and go to `cells`
    // kStageRecords at a time (see append).
    Cell stage[kStageRecords];
    std::atomic<uint32_t> staged{0};  // records in `stage`; written by the owner only
    std::unique_ptr<Cell[]> cells{new Cell[kRingRecords]};
    std::atomic<uint64_t> next{0};  // records moved to `cells` so far; written by the owner only
  };
  Ring& mine();
  static bool readCell(const Cell& c, ExplainRecord* out);
  // The newest record whose keys[kind] is `key` among the last min(n, size) of n records
  // written round a buffer of `size` cells.
  static bool newest(const Cell* cells, size_t size, uint64_t n, int kind, uint64_t key,
                     ExplainRecord* out);

  const uint64_t id_;  // tells this log's per-thread ring from another (or an earlier) log's
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Ring>> rings_;  // one per thread that recorded; never shrinks
};

}  // namespace sluice
