#include "core/random.h"

#include <sys/random.h>

#include <chrono>

namespace sluice {
namespace {

struct Xoshiro {
  uint64_t s[4];
  Xoshiro() {
    if (getrandom(s, sizeof(s), 0) != sizeof(s)) {
      uint64_t seed = static_cast<uint64_t>(
          std::chrono::steady_clock::now().time_since_epoch().count());
      for (auto& x : s) {
        seed += 0x9e3779b97f4a7c15ULL;
        uint64_t z = seed;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        x = z ^ (z >> 31);
      }
    }
  }
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t next() {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
  }
};

thread_local Xoshiro t_rng;

}  // namespace

uint64_t fastRandom() { return t_rng.next(); }

void randomHex(char* out, size_t nchars) {
  static const char kHex[] = "0123456789abcdef";
  uint64_t r = 0;
  for (size_t i = 0; i < nchars; i++) {
    if (i % 16 == 0) r = t_rng.next();
    out[i] = kHex[r & 0xf];
    r >>= 4;
  }
}

std::string randomHex128() {
  std::string s(32, '0');
  randomHex(s.data(), 32);
  return s;
}

}  // namespace sluice
