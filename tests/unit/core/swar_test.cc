#include "core/swar.h"

#include <catch2/catch.hpp>

#include <random>

namespace sluice {
namespace {

TEST_CASE("swar::popcount64 counts like the builtin", "[core][swar]") {
  CHECK(swar::popcount64(0) == 0);
  CHECK(swar::popcount64(~uint64_t{0}) == 64);
  CHECK(swar::popcount64(uint64_t{1} << 63) == 1);
  for (int i = 0; i < 64; ++i) CHECK(swar::popcount64((uint64_t{1} << i) - 1) == i);
  std::mt19937_64 rng(3);
  for (int i = 0; i < 100000; ++i) {
    const uint64_t x = rng() & rng();  // denser and sparser words too
    REQUIRE(swar::popcount64(x) == __builtin_popcountll(x));
  }
}

}  // namespace
}  // namespace sluice
