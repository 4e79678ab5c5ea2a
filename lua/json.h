#pragma once
// sluice.json: a small strict JSON codec between text and the Lua stack. Written here rather
// than loading Debian's cjson.so because the sandbox has no package.loadlib, and because every
// decode must be bounded in depth and size on hostile upstream bodies.
//  - null decodes to sluice.json.null (a light userdata), which encodes back to null;
//  - a table encodes as an array when its keys are exactly 1..n (n > 0) or it carries the
//    array metatable (sluice.json.array(t), so an empty list can be []), else as an object
//    whose keys must be strings;
//  - NaN/inf, functions, userdata other than null, cycles and depth past the limit fail.
#include <cstddef>
#include <string>
#include <string_view>

struct lua_State;

namespace sluice::lua {

struct JsonLimits {
  size_t max_depth = 64;
  size_t max_bytes = 8 << 20;  // input to decode, output of encode
};

// Pushes one value on success; on failure pushes nothing and sets *err.
bool jsonDecode(lua_State* L, std::string_view text, const JsonLimits& limits, std::string* err);
// Encodes the value at `index` (no stack change).
bool jsonEncode(lua_State* L, int index, const JsonLimits& limits, std::string* out,
                std::string* err);
// The registry key of the array metatable (pushes it, creating it once per state).
void pushJsonArrayMeta(lua_State* L);

}  // namespace sluice::lua
