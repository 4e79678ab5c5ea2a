#include "limiter/concurrency.h"

#include <catch2/catch.hpp>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

namespace sluice::limiter {
namespace {

TEST_CASE("concurrency slots are released by their destructor", "[limiter][concurrency]") {
  ConcurrencyLimiter limiter(2);
  {
    AcquireResult a = limiter.tryAcquire();
    AcquireResult b = limiter.tryAcquire();
    CHECK(a.acquired());
    CHECK(b.acquired());
    CHECK(limiter.inFlight() == 2);
    AcquireResult c = limiter.tryAcquire();
    CHECK(c.status == AcquireStatus::kAtLimit);
    CHECK_FALSE(c.slot.held());
    CHECK(limiter.inFlight() == 2);
  }
  CHECK(limiter.inFlight() == 0);
}

// A request object that ends in every way a request can end: the slot goes with it.
struct FakeRequest {
  ConcurrencySlot slot;
};

TEST_CASE("concurrency slot survives moves and releases exactly once", "[limiter][concurrency]") {
  ConcurrencyLimiter limiter(1);
  std::optional<FakeRequest> request;
  {
    AcquireResult r = limiter.tryAcquire();
    REQUIRE(r.acquired());
    request.emplace(FakeRequest{std::move(r.slot)});
    CHECK_FALSE(r.slot.held());
  }
  CHECK(limiter.inFlight() == 1);
  ConcurrencySlot moved = std::move(request->slot);
  request.reset();  // client abort: the request object dies first
  CHECK(limiter.inFlight() == 1);
  moved.release();  // early release, then the destructor does nothing more
  moved.release();
  CHECK(limiter.inFlight() == 0);
  // Move-assigning over a held slot releases the old one.
  ConcurrencySlot a = limiter.tryAcquire().slot;
  CHECK(limiter.inFlight() == 1);
  a = ConcurrencySlot();
  CHECK(limiter.inFlight() == 0);
}

TEST_CASE("concurrency limit changes apply to new requests", "[limiter][concurrency]") {
  ConcurrencyLimiter limiter(1);
  ConcurrencySlot first = limiter.tryAcquire().slot;
  limiter.setLimit(3);
  ConcurrencySlot second = limiter.tryAcquire().slot;
  CHECK(second.held());
  limiter.setLimit(1);
  CHECK_FALSE(limiter.tryAcquire().acquired());
  CHECK(limiter.inFlight() == 2);
}

TEST_CASE("concurrency limiter never exceeds its limit under two threads", "[limiter][concurrency]") {
  ConcurrencyLimiter limiter(3);
  std::atomic<uint32_t> peak{0};
  auto worker = [&] {
    for (int i = 0; i < 100000; ++i) {
      AcquireResult r = limiter.tryAcquire();
      if (r.acquired()) {
        uint32_t seen = limiter.inFlight();
        uint32_t p = peak.load();
        while (seen > p && !peak.compare_exchange_weak(p, seen)) {
        }
      }
    }
  };
  std::thread a(worker);
  std::thread b(worker);
  a.join();
  b.join();
  CHECK(peak.load() <= 3);
  CHECK(limiter.inFlight() == 0);
}

TEST_CASE("keyed concurrency: per-key counts, entries gone at zero", "[limiter][concurrency]") {
  KeyedConcurrencyLimiter limiter(2, 1 << 16);
  std::vector<ConcurrencySlot> held;
  held.push_back(limiter.tryAcquire(1).slot);
  held.push_back(limiter.tryAcquire(1).slot);
  CHECK(limiter.tryAcquire(1).status == AcquireStatus::kAtLimit);
  AcquireResult other = limiter.tryAcquire(2);
  CHECK(other.acquired());
  CHECK(other.inFlight == 1);
  CHECK(limiter.inFlight(1) == 2);
  CHECK(limiter.keysInFlight() == 2);
  held.clear();
  CHECK(limiter.inFlight(1) == 0);
  CHECK(limiter.keysInFlight() == 1);
  other.slot.release();
  CHECK(limiter.keysInFlight() == 0);
}

TEST_CASE("keyed concurrency: in-flight keys are pinned, a full set refuses", "[limiter][concurrency]") {
  KeyedConcurrencyLimiter limiter(1, 128);  // one set of 10
  REQUIRE(KeyedConcurrencyLimiter::Table::kWays == 10);
  std::vector<ConcurrencySlot> held;
  for (uint64_t k = 1; k <= 10; ++k) {
    AcquireResult r = limiter.tryAcquire(k);
    REQUIRE(r.acquired());
    held.push_back(std::move(r.slot));
  }
  CHECK(limiter.tryAcquire(11).status == AcquireStatus::kTableFull);
  for (uint64_t k = 1; k <= 10; ++k) CHECK(limiter.inFlight(k) == 1);  // nobody lost a count
  held.pop_back();
  CHECK(limiter.tryAcquire(11).acquired());
}

}  // namespace
}  // namespace sluice::limiter
