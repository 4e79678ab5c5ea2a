#pragma once
// A fast non-cryptographic 64-bit hash for table keys and consistent hashing. Not for secrets.
#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/swar.h"

namespace sluice {

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// hash64's steps, for callers that already hold a key's words (risk's header scan): start, one
// step per full 8-byte word, then finish with the zero-extended 1-7 byte tail (0 when none).
namespace hash64_steps {
inline uint64_t start(uint64_t seed) { return 0xcbf29ce484222325ULL ^ seed; }
inline uint64_t word(uint64_t h, uint64_t w) {
  h = (h ^ w) * 0x100000001b3ULL;
  return h ^ (h >> 29);
}
inline uint64_t finish(uint64_t h, uint64_t tail, size_t size) {
  return mix64((h ^ tail ^ (static_cast<uint64_t>(size) << 56)) * 0x100000001b3ULL);
}
}  // namespace hash64_steps

inline uint64_t hash64(std::string_view s, uint64_t seed = 0) {
  // FNV-1a over 8-byte words, then a strong finaliser: fast on short keys, well spread.
  uint64_t h = hash64_steps::start(seed);
  const char* p = s.data();
  size_t n = s.size();
  while (n >= 8) {
    h = hash64_steps::word(h, swar::load8(p));
    p += 8;
    n -= 8;
  }
  // The last 1-7 bytes, zero-extended: the value a memcpy into a zeroed word gives, without a
  // variable-length memcpy call (a third of the hash on short keys).
  const uint64_t tail = n ? swar::loadPartial(p, n) : 0;  // p may be null for an empty view
  return hash64_steps::finish(h, tail, s.size());
}

}  // namespace sluice
