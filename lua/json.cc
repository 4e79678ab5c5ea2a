#include "lua/json.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include <lua.hpp>

namespace sluice::lua {

namespace {

char kArrayMetaKey;

bool isJsonNull(lua_State* L, int idx) {
  return lua_type(L, idx) == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == nullptr;
}

class Decoder {
 public:
  Decoder(lua_State* L, std::string_view s, const JsonLimits& lim) : L_(L), s_(s), lim_(lim) {}

  bool run(std::string* err) {
    skipWs();
    if (!value(0)) {
      *err = err_;
      return false;
    }
    skipWs();
    if (pos_ != s_.size()) {
      lua_pop(L_, 1);
      *err = fail("trailing characters");
      return false;
    }
    return true;
  }

 private:
  std::string fail(const char* what) {
    err_ = std::string(what) + " at offset " + std::to_string(pos_);
    return err_;
  }
  void skipWs() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      pos_++;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) {
      fail("invalid literal");
      return false;
    }
    pos_ += word.size();
    return true;
  }

  // Pushes exactly one value on success, nothing on failure.
  bool value(size_t depth) {
    if (depth > lim_.max_depth) {
      fail("nesting too deep");
      return false;
    }
    if (!lua_checkstack(L_, 4)) {
      fail("nesting too deep");
      return false;
    }
    if (pos_ >= s_.size()) {
      fail("unexpected end");
      return false;
    }
    char c = s_[pos_];
    switch (c) {
      case '{': return object(depth);
      case '[': return array(depth);
      case '"': return string();
      case 't':
        if (!literal("true")) return false;
        lua_pushboolean(L_, 1);
        return true;
      case 'f':
        if (!literal("false")) return false;
        lua_pushboolean(L_, 0);
        return true;
      case 'n':
        if (!literal("null")) return false;
        lua_pushlightuserdata(L_, nullptr);
        return true;
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        fail("unexpected character");
        return false;
    }
  }

  bool number() {
    size_t start = pos_;
    if (s_[pos_] == '-') pos_++;
    auto digits = [&] {
      size_t n = 0;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') pos_++, n++;
      return n;
    };
    if (pos_ < s_.size() && s_[pos_] == '0') {
      pos_++;
    } else if (digits() == 0) {
      fail("invalid number");
      return false;
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      pos_++;
      if (digits() == 0) {
        fail("invalid number");
        return false;
      }
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      pos_++;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) pos_++;
      if (digits() == 0) {
        fail("invalid number");
        return false;
      }
    }
    // from_chars reads the validated text in place (no NUL-terminated copy) and rounds as
    // strtod does; out of range (overflow, and underflow, which strtod turns into 0 or a
    // denormal) falls back to strtod so both keep their old results.
    double d = 0;
    auto [end, ec] = std::from_chars(s_.data() + start, s_.data() + pos_, d);
    if (ec != std::errc() || end != s_.data() + pos_) {
      std::string tmp(s_.substr(start, pos_ - start));
      d = strtod(tmp.c_str(), nullptr);
    }
    if (!std::isfinite(d)) {
      fail("number out of range");
      return false;
    }
    lua_pushnumber(L_, d);
    return true;
  }

  static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  bool hex4(unsigned* out) {
    if (pos_ + 4 > s_.size()) return false;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
      int h = hex(s_[pos_ + i]);
      if (h < 0) return false;
      v = v * 16 + static_cast<unsigned>(h);
    }
    pos_ += 4;
    *out = v;
    return true;
  }
  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool rawString(std::string& out) {
    pos_++;  // opening quote
    while (true) {
      if (pos_ >= s_.size()) {
        fail("unterminated string");
        return false;
      }
      char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) {
        fail("control character in string");
        return false;
      }
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) {
        fail("unterminated string");
        return false;
      }
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp;
          if (!hex4(&cp)) {
            fail("invalid \\u escape");
            return false;
          }
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned lo;
            if (pos_ + 2 > s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u') {
              fail("lone surrogate");
              return false;
            }
            pos_ += 2;
            if (!hex4(&lo) || lo < 0xDC00 || lo > 0xDFFF) {
              fail("invalid surrogate pair");
              return false;
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("lone surrogate");
            return false;
          }
          utf8(out, cp);
          break;
        }
        default:
          fail("invalid escape");
          return false;
      }
    }
  }

  bool string() {
    // Most strings (every key, most values) have no escape: pushed straight from the text,
    // without building a std::string a byte at a time.
    for (size_t i = pos_ + 1; i < s_.size(); i++) {
      const unsigned char u = static_cast<unsigned char>(s_[i]);
      if (u == '"') {
        lua_pushlstring(L_, s_.data() + pos_ + 1, i - pos_ - 1);
        pos_ = i + 1;
        return true;
      }
      if (u == '\\' || u < 0x20) break;
    }
    std::string out;
    if (!rawString(out)) return false;
    lua_pushlstring(L_, out.data(), out.size());
    return true;
  }

  bool array(size_t depth) {
    pos_++;
    lua_createtable(L_, 0, 0);
    pushJsonArrayMeta(L_);
    lua_setmetatable(L_, -2);
    skipWs();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      pos_++;
      return true;
    }
    for (int i = 1;; i++) {
      skipWs();
      if (!value(depth + 1)) {
        lua_pop(L_, 1);
        return false;
      }
      lua_rawseti(L_, -2, i);
      skipWs();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        pos_++;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        pos_++;
        return true;
      }
      lua_pop(L_, 1);
      fail("expected ',' or ']'");
      return false;
    }
  }

  bool object(size_t depth) {
    pos_++;
    lua_createtable(L_, 0, 0);
    skipWs();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      pos_++;
      return true;
    }
    while (true) {
      skipWs();
      if (pos_ >= s_.size() || s_[pos_] != '"') {
        lua_pop(L_, 1);
        fail("expected string key");
        return false;
      }
      if (!string()) {
        lua_pop(L_, 1);
        return false;
      }
      skipWs();
      if (pos_ >= s_.size() || s_[pos_] != ':') {
        lua_pop(L_, 2);
        fail("expected ':'");
        return false;
      }
      pos_++;
      skipWs();
      if (!value(depth + 1)) {
        lua_pop(L_, 2);
        return false;
      }
      lua_rawset(L_, -3);
      skipWs();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        pos_++;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        pos_++;
        return true;
      }
      lua_pop(L_, 1);
      fail("expected ',' or '}'");
      return false;
    }
  }

  lua_State* L_;
  std::string_view s_;
  const JsonLimits& lim_;
  size_t pos_ = 0;
  std::string err_;
};

// Bytes a JSON string must escape (control characters, DEL, quote, backslash): one load per
// byte in the encoder's scan instead of four compares.
struct EscapeTable {
  bool need[256] = {};
  constexpr EscapeTable() {
    for (int c = 0; c < 0x20; c++) need[c] = true;
    need[0x7f] = need['"'] = need['\\'] = true;
  }
};
constexpr EscapeTable kEscape;

class Encoder {
 public:
  Encoder(lua_State* L, const JsonLimits& lim, std::string* out) : L_(L), lim_(lim), out_(out) {}

  bool value(int idx, size_t depth, std::string* err) {
    if (out_->size() > lim_.max_bytes) {
      *err = "encoded JSON too large";
      return false;
    }
    switch (lua_type(L_, idx)) {
      case LUA_TNIL: *out_ += "null"; return true;
      case LUA_TBOOLEAN: *out_ += lua_toboolean(L_, idx) ? "true" : "false"; return true;
      case LUA_TNUMBER: {
        double d = lua_tonumber(L_, idx);
        if (!std::isfinite(d)) {
          *err = "cannot encode NaN or infinity";
          return false;
        }
        // Integers as integers; anything else as the shortest text that reads back as the same
        // double (std::to_chars, Ryu-style). glibc's "%.17g" cost ~8,000 instructions per
        // item_page response here and printed 250.29 as 250.28999999999999.
        char buf[32];
        std::to_chars_result r;
        if (d == std::floor(d) && std::fabs(d) < 1e15)
          r = std::to_chars(buf, buf + sizeof buf, static_cast<int64_t>(d));
        else
          r = std::to_chars(buf, buf + sizeof buf, d);
        out_->append(buf, static_cast<size_t>(r.ptr - buf));
        return true;
      }
      case LUA_TSTRING: {
        size_t n;
        const char* s = lua_tolstring(L_, idx, &n);
        string(std::string_view(s, n));
        return true;
      }
      case LUA_TLIGHTUSERDATA:
        if (isJsonNull(L_, idx)) {
          *out_ += "null";
          return true;
        }
        break;
      case LUA_TTABLE: return table(idx, depth, err);
      default: break;
    }
    *err = std::string("cannot encode a ") + luaL_typename(L_, idx);
    return false;
  }

 private:
  void string(std::string_view s) {
    static const char* kHex = "0123456789abcdef";
    *out_ += '"';
    // Runs of bytes that need no escape are appended whole (most of a body is such a run).
    size_t run = 0;
    for (size_t i = 0; i < s.size(); i++) {
      const unsigned char u = static_cast<unsigned char>(s[i]);
      if (!kEscape.need[u]) continue;
      out_->append(s.data() + run, i - run);
      run = i + 1;
      const char c = s[i];
      switch (c) {
        case '"': *out_ += "\\\""; break;
        case '\\': *out_ += "\\\\"; break;
        case '\n': *out_ += "\\n"; break;
        case '\r': *out_ += "\\r"; break;
        case '\t': *out_ += "\\t"; break;
        default:
          *out_ += "\\u00";
          *out_ += kHex[u >> 4];
          *out_ += kHex[u & 15];
      }
    }
    out_->append(s.data() + run, s.size() - run);
    *out_ += '"';
  }

  bool table(int idx, size_t depth, std::string* err) {
    if (depth >= lim_.max_depth) {
      *err = "table nested too deep (or a cycle)";
      return false;
    }
    if (!lua_checkstack(L_, 4)) {
      *err = "table nested too deep";
      return false;
    }
    if (idx < 0) idx = lua_gettop(L_) + idx + 1;
    bool marked = false;
    if (lua_getmetatable(L_, idx)) {
      pushJsonArrayMeta(L_);
      marked = lua_rawequal(L_, -1, -2);
      lua_pop(L_, 2);
    }
    // Count keys: an array needs exactly the keys 1..n.
    size_t count = 0;
    bool all_positive_ints = true;
    double max_key = 0;
    lua_pushnil(L_);
    while (lua_next(L_, idx)) {
      count++;
      lua_pop(L_, 1);
      if (lua_type(L_, -1) == LUA_TNUMBER) {
        double k = lua_tonumber(L_, -1);
        if (k >= 1 && k == std::floor(k)) {
          if (k > max_key) max_key = k;
          continue;
        }
      }
      // One key that is not a positive integer makes it an object whatever the rest are (count
      // is then > 0, so a marked array does not apply): no need to walk the other keys twice.
      all_positive_ints = false;
      lua_pop(L_, 1);
      break;
    }
    bool is_array = (count > 0 && all_positive_ints && max_key == static_cast<double>(count)) ||
                    (marked && (count == 0 || all_positive_ints));
    if (is_array) {
      *out_ += '[';
      size_t n = static_cast<size_t>(max_key);
      for (size_t i = 1; i <= n; i++) {
        if (i > 1) *out_ += ',';
        lua_rawgeti(L_, idx, static_cast<int>(i));
        bool ok = value(-1, depth + 1, err);
        lua_pop(L_, 1);
        if (!ok) return false;
      }
      *out_ += ']';
      return true;
    }
    *out_ += '{';
    bool first = true;
    lua_pushnil(L_);
    while (lua_next(L_, idx)) {
      if (lua_type(L_, -2) != LUA_TSTRING) {
        lua_pop(L_, 2);
        *err = "cannot encode a table mixing array and object keys (object keys must be strings)";
        return false;
      }
      if (!first) *out_ += ',';
      first = false;
      size_t n;
      const char* k = lua_tolstring(L_, -2, &n);
      string(std::string_view(k, n));
      *out_ += ':';
      if (!value(-1, depth + 1, err)) {
        lua_pop(L_, 2);
        return false;
      }
      lua_pop(L_, 1);
    }
    *out_ += '}';
    return true;
  }

  lua_State* L_;
  const JsonLimits& lim_;
  std::string* out_;
};

}  // namespace

void pushJsonArrayMeta(lua_State* L) {
  lua_pushlightuserdata(L, &kArrayMetaKey);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__jsontype");
    lua_pushlightuserdata(L, &kArrayMetaKey);
    lua_pushvalue(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
  }
}

bool jsonDecode(lua_State* L, std::string_view text, const JsonLimits& limits, std::string* err) {
  if (text.size() > limits.max_bytes) {
    *err = "JSON text too large";
    return false;
  }
  Decoder d(L, text, limits);
  return d.run(err);
}

bool jsonEncode(lua_State* L, int index, const JsonLimits& limits, std::string* out,
                std::string* err) {
  if (index < 0) index = lua_gettop(L) + index + 1;
  out->clear();
  Encoder e(L, limits, out);
  if (!e.value(index, 0, err)) return false;
  if (out->size() > limits.max_bytes) {
    *err = "encoded JSON too large";
    return false;
  }
  return true;
}

}  // namespace sluice::lua
