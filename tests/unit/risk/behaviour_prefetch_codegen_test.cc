// Probes for tests/codegen/check_prefetch.py (ctest "codegen: behaviour prefetch kept"): the
// bug it pins is GCC deleting every inlined call of BehaviourTracker::prefetch (a function whose
// only effect was __builtin_prefetch is "const" to GCC), so evaluate() paid three cache misses on
// the behaviour sets' locks. The probes are out of line and kept, so the script can read their
// machine code; the Catch test below only makes sure they run.
#include <catch2/catch.hpp>

#include "limiter/key_table.h"
#include "risk/behaviour.h"

extern "C" __attribute__((noinline, used)) void sluice_codegen_behaviour_prefetch(
    const sluice::risk::BehaviourTracker& tracker, const sluice::risk::BehaviourEvent& event) {
  tracker.prefetch(event);
}

extern "C" __attribute__((noinline, used)) void sluice_codegen_key_table_prefetch(
    const sluice::limiter::KeyTable<uint64_t>& table, uint64_t key) {
  if (key != 0) table.prefetch(key);
}

TEST_CASE("prefetch probes run on real tables", "[risk][behaviour]") {
  sluice::risk::BehaviourTracker tracker(1 << 20);
  sluice::risk::BehaviourEvent event;
  event.keys[0] = 42;
  event.keys[2] = 7;
  sluice_codegen_behaviour_prefetch(tracker, event);
  sluice::limiter::KeyTable<uint64_t> table(1 << 16);
  sluice_codegen_key_table_prefetch(table, 42);
  // A prefetch changes nothing observable: the tables are still empty.
  CHECK(tracker.table(sluice::risk::EntityKind::kIp).liveEntries() == 0);
  CHECK(table.liveEntries() == 0);
}
