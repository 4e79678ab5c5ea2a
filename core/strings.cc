#include "core/strings.h"

#include <cstdint>
#include <cstdio>
#include <cstring>

#include "core/swar.h"

namespace sluice {

namespace {

inline bool wordsEqualIgnoreCase(uint64_t x, uint64_t y) {
  // Equal bytes, or bytes that differ only in 0x20: only then is folding worth it.
  return x == y || (((x ^ y) & ~(0x20 * swar::kOnes)) == 0 && swar::lowerAscii(x) == swar::lowerAscii(y));
}

}  // namespace

bool equalsIgnoreCaseN(const char* p, const char* q, size_t n) {
  // Header names on every lookup of every request: eight bytes at a time (the last word
  // overlaps the one before it), not a byte at a time.
  if (n >= 8) {
    for (size_t i = 0; i + 8 < n; i += 8)
      if (!wordsEqualIgnoreCase(swar::load8(p + i), swar::load8(q + i))) return false;
    return wordsEqualIgnoreCase(swar::load8(p + n - 8), swar::load8(q + n - 8));
  }
  for (size_t i = 0; i < n; i++)
    if (asciiLower(p[i]) != asciiLower(q[i])) return false;
  return true;
}

std::string toLower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = asciiLower(c);
  return out;
}

bool headerHasToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    std::string_view part = trim(value.substr(0, comma));
    if (equalsIgnoreCase(part, token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

// Parses "12", "1.5" or ".5" exactly, as mantissa / 10^scale. Going through double made
// "1.23s" come out a nanosecond short and let huge sizes overflow the uint64_t cast (UB).
static bool parseDecimal(std::string_view& s, uint64_t* mantissa, int* scale) {
  uint64_t m = 0;
  int sc = 0;
  bool digits = false;
  bool frac = false;
  size_t i = 0;
  for (; i < s.size(); i++) {
    char c = s[i];
    if (c >= '0' && c <= '9') {
      uint64_t d = static_cast<uint64_t>(c - '0');
      if (m > (UINT64_MAX - d) / 10) return false;  // more digits than anyone means
      m = m * 10 + d;
      digits = true;
      if (frac && ++sc > 18) return false;
    } else if (c == '.' && !frac) {
      frac = true;
    } else {
      break;
    }
  }
  if (!digits) return false;
  s.remove_prefix(i);
  *mantissa = m;
  *scale = sc;
  return true;
}

// mantissa / 10^scale * mult, truncated; false if it exceeds `max`.
static bool scaleDecimal(uint64_t mantissa, int scale, uint64_t mult, uint64_t max,
                         uint64_t* out) {
  unsigned __int128 r = static_cast<unsigned __int128>(mantissa) * mult;
  for (int i = 0; i < scale; i++) r /= 10;
  if (r > max) return false;
  *out = static_cast<uint64_t>(r);
  return true;
}

bool parseDurationNanos(std::string_view s, int64_t* out) {
  s = trim(s);
  uint64_t m;
  int scale;
  if (!parseDecimal(s, &m, &scale)) return false;
  uint64_t mult;
  if (s == "ns") mult = 1;
  else if (s == "us") mult = 1000;
  else if (s == "ms") mult = 1000000;
  else if (s == "s") mult = 1000000000;
  else if (s == "m") mult = 60ull * 1000000000;
  else if (s == "h") mult = 3600ull * 1000000000;
  else return false;
  uint64_t r;
  if (!scaleDecimal(m, scale, mult, INT64_MAX, &r)) return false;
  *out = static_cast<int64_t>(r);
  return true;
}

bool parseSize(std::string_view s, uint64_t* out) {
  s = trim(s);
  uint64_t m;
  int scale;
  if (!parseDecimal(s, &m, &scale)) return false;
  uint64_t mult;
  if (s.empty() || s == "b" || s == "B") mult = 1;
  else if (s == "k" || s == "K" || s == "kb" || s == "KB") mult = 1024;
  else if (s == "m" || s == "M" || s == "mb" || s == "MB") mult = 1024 * 1024;
  else if (s == "g" || s == "G" || s == "gb" || s == "GB") mult = 1024 * 1024 * 1024;
  else return false;
  return scaleDecimal(m, scale, mult, UINT64_MAX, out);
}

std::string percentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '+') out.push_back(' ');
    else if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string jsonEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out;
}

}  // namespace sluice
