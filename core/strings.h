#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/swar.h"

namespace sluice {

inline char asciiLower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; }
// ASCII case-insensitive equality of two equally long byte runs.
bool equalsIgnoreCaseN(const char* a, const char* b, size_t n);
// The length check inline: most header-name comparisons stop there, without a call.
inline bool equalsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && equalsIgnoreCaseN(a.data(), b.data(), a.size());
}
// equalsIgnoreCase(a, lower) for a `lower` with no upper-case ASCII (a literal, say), inline: only
// `a` is folded, a word at a time from 4 bytes on (from 8 the last word overlaps the one before),
// where equalsIgnoreCaseN is a call and goes a byte at a time under 8 bytes.
inline bool equalsLowerCase(std::string_view a, std::string_view lower) {
  const size_t n = lower.size();
  if (a.size() != n) return false;
  if (n < 4) return equalsIgnoreCaseN(a.data(), lower.data(), n);
  const char* p = a.data();
  const char* q = lower.data();
  if (n < 8) return swar::lowerAscii(swar::loadPartial(p, n)) == swar::loadPartial(q, n);
  for (size_t i = 0; i + 8 < n; i += 8)
    if (swar::lowerAscii(swar::load8(p + i)) != swar::load8(q + i)) return false;
  return swar::lowerAscii(swar::load8(p + n - 8)) == swar::load8(q + n - 8);
}
std::string toLower(std::string_view s);
// Without leading and trailing spaces and tabs. Inline: it runs on every cookie pair.
inline std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) --e;
  return s.substr(b, e - b);
}
// True if the comma-separated header value contains `token` (case-insensitive), as in
// "Connection: keep-alive, Upgrade".
bool headerHasToken(std::string_view value, std::string_view token);

// Typed config values. Durations: "250ms", "5s", "2m", "1h", "100us"; a bare number is refused so
// that "5" never silently means five milliseconds or five seconds.
bool parseDurationNanos(std::string_view s, int64_t* out);
// Sizes: "512", "16k", "8m", "1g" (binary multiples, case-insensitive).
bool parseSize(std::string_view s, uint64_t* out);

std::string jsonEscape(std::string_view s);
// A query string value: %XX decoded, '+' as a space; malformed escapes kept as they are.
std::string percentDecode(std::string_view s);

}  // namespace sluice
