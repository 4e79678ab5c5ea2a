#pragma once
// Eight bytes at a time in a 64-bit word (SWAR): the loads and byte-class masks that header-name
// compares, the hash's tail, the risk header scan and the UA normaliser share.
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace sluice::swar {

constexpr uint64_t kOnes = 0x0101010101010101ULL;
constexpr uint64_t kHigh = 0x8080808080808080ULL;

inline uint64_t load8(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

// n (1..8) bytes at p, little-endian, zero-extended, never reading outside [p, p + n): two
// overlapping loads for 4..8 bytes, three single bytes for 1..3 (overlapping bytes are equal,
// so OR-ing is exact). A variable-length memcpy would be a library call.
inline uint64_t loadPartial(const char* p, size_t n) {
  if (n == 8) return load8(p);
  if (n >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + n - 4, 4);
    return uint64_t{lo} | uint64_t{hi} << (8 * (n - 4));
  }
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return uint64_t{u[0]} | uint64_t{u[n / 2]} << (8 * (n / 2)) | uint64_t{u[n - 1]} << (8 * (n - 1));
}

// The bits in which n bytes at p (read only within them; p may be null when n is 0) differ from a
// stored copy that has 8 readable bytes past its end: 0 when equal. From 8 bytes on, the first
// and last words (overlapping) and any between, so up to 16 bytes is two compares with no loop;
// under 8, one partial load. Memo hits compare request bytes with stored keys this way.
inline uint64_t diffFromPadded(const char* stored, const char* p, size_t n) {
  if (n >= 8) {
    uint64_t d = (load8(stored) ^ load8(p)) | (load8(stored + n - 8) ^ load8(p + n - 8));
    for (size_t i = 8; i + 8 < n; i += 8) d |= load8(stored + i) ^ load8(p + i);
    return d;
  }
  if (n == 0) return 0;
  const uint64_t keep = ~uint64_t{0} >> (64 - 8 * n);
  return (load8(stored) ^ loadPartial(p, n)) & keep;
}

// 0x80 in every byte of w that is an ASCII byte in [lo, hi] (lo >= 1, hi <= 0x7e), 0 elsewhere.
// For 7-bit bytes b, b + (0x80 - lo) sets the high bit iff b >= lo, with no carry out; bytes
// >= 0x80 are in no range.
inline uint64_t inRange(uint64_t w, unsigned lo, unsigned hi) {
  const uint64_t low7 = w & ~kHigh;
  return (low7 + kOnes * (0x80 - lo)) & ~(low7 + kOnes * (0x80 - hi - 1)) & ~w & kHigh;
}

inline uint64_t upperMask(uint64_t w) { return inRange(w, 'A', 'Z'); }
// ASCII capitals lowered, every other byte (non-ASCII too) unchanged: 0x80 >> 2 = 0x20.
inline uint64_t lowerAscii(uint64_t w) { return w | (upperMask(w) >> 2); }

// Bits set in x. The build targets baseline x86-64 (no POPCNT), where __builtin_popcountll is a
// libgcc call; this is a dozen inline instructions.
inline int popcount64(uint64_t x) {
#ifdef __POPCNT__
  return __builtin_popcountll(x);
#else
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
  return static_cast<int>((x * kOnes) >> 56);
#endif
}

}  // namespace sluice::swar
