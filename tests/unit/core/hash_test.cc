#include "core/hash.h"

#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <string>

namespace sluice {
namespace {

// hash64 as first written (the tail read with a variable-length memcpy). Key hashes reach Redis
// (cluster-scope limits) and consistent-hash rings, so a faster hash64 must give the same values.
uint64_t referenceHash64(std::string_view s, uint64_t seed = 0) {
  uint64_t h = 0xcbf29ce484222325ULL ^ seed;
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t tail = 0;
  if (n) memcpy(&tail, p, n);
  h = (h ^ tail ^ (static_cast<uint64_t>(s.size()) << 56)) * 0x100000001b3ULL;
  return mix64(h);
}

}  // namespace

TEST_CASE("hash64: the overlapping-load tail gives the memcpy tail's value at every length", "[core][hash]") {
  std::mt19937_64 rng(7);
  std::string buf(64, '\0');
  for (int round = 0; round < 200; round++) {
    for (auto& c : buf) c = static_cast<char>(rng());
    for (size_t len = 0; len <= 40; len++) {
      for (size_t off = 0; off < 8; off++) {
        std::string_view v(buf.data() + off, len);
        REQUIRE(hash64(v) == referenceHash64(v));
        REQUIRE(hash64(v, 0x5b1ce) == referenceHash64(v, 0x5b1ce));
      }
    }
  }
  CHECK(hash64(std::string_view()) == referenceHash64(std::string_view()));
}

TEST_CASE("hash64: order, seed and length matter; bytes past the view do not", "[core][hash]") {
  CHECK(hash64("") == referenceHash64(""));
  CHECK(hash64("a") != hash64("b"));
  CHECK(hash64("ab") != hash64("ba"));
  CHECK(hash64("abc", 1) != hash64("abc", 2));
  // A byte past the view never leaks into the hash.
  std::string s = "member-42X";
  CHECK(hash64(std::string_view(s.data(), 9)) == hash64("member-42"));
}

}  // namespace sluice
