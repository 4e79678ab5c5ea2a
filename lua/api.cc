// The sluice.* bindings. Every function is a C closure whose upvalue is its ApiFn entry, so the
// phase check is one mask test; argument errors are Lua errors raised at the caller's file:line.
#include <cctype>
#include <cmath>
#include <cstring>
#include <string>

#include "core/strings.h"
#include "lua/json.h"
#include "lua/request.h"
#include "lua/vm_internal.h"

namespace sluice::lua {

namespace {

constexpr PhaseMask bits(std::initializer_list<Phase> ps) {
  PhaseMask m = 0;
  for (Phase p : ps) m |= phaseBit(p);
  return m;
}

constexpr PhaseMask kYield = bits({Phase::kRewrite, Phase::kAccess, Phase::kAggregate});
constexpr PhaseMask kReq = bits({Phase::kRewrite, Phase::kAccess, Phase::kAggregate,
                                 Phase::kBalancer, Phase::kHeaderFilter, Phase::kBodyFilter,
                                 Phase::kLog});
constexpr PhaseMask kAll = (PhaseMask{1} << static_cast<unsigned>(Phase::kCount)) - 1;
constexpr PhaseMask kWorker = kReq | bits({Phase::kInitWorker, Phase::kTimer, Phase::kDestroy});
constexpr PhaseMask kTimers = kReq | bits({Phase::kInitWorker, Phase::kTimer});

struct ApiFn {
  const char* table;  // nullptr: directly on sluice
  const char* name;
  lua_CFunction fn;
  PhaseMask phases;
};

[[noreturn]] void phaseError(lua_State* L, const char* table, const char* name, PhaseMask mask,
                             Phase current) {
  std::string allowed;
  for (unsigned i = 0; i < static_cast<unsigned>(Phase::kCount); i++) {
    if (!(mask & (PhaseMask{1} << i))) continue;
    if (!allowed.empty()) allowed += ", ";
    allowed += phaseName(static_cast<Phase>(i));
  }
  std::string full = std::string("sluice.") + (table ? std::string(table) + "." : "") + name;
  luaL_error(L, "%s is not allowed in phase '%s' (allowed in: %s)", full.c_str(),
             phaseName(current), allowed.c_str());
  abort();  // not reached: luaL_error does not return
}

// Phase check for the running binding; returns the VM core.
inline VmCore* enter(lua_State* L) {
  VmCore* c = coreOf(L);
  auto* fn = static_cast<const ApiFn*>(lua_touserdata(L, lua_upvalueindex(1)));
  if (!(fn->phases & phaseBit(c->phase))) phaseError(L, fn->table, fn->name, fn->phases, c->phase);
  return c;
}

inline LuaRequest& request(lua_State* L, VmCore* c) {
  if (!c->request) luaL_error(L, "no request is running");
  return *c->request;
}

// Yielding bindings must run on the request's own coroutine, not inside a user coroutine
// (which would swallow the yield).
void requireRequestCoroutine(lua_State* L, LuaRequest& r, const char* what) {
  if (L != r.coroutine())
    luaL_error(L, "%s cannot be called from inside a coroutine the policy created", what);
}

void pushSv(lua_State* L, std::string_view s) { lua_pushlstring(L, s.data(), s.size()); }

std::string_view checkSv(lua_State* L, int idx) {
  size_t n;
  const char* s = luaL_checklstring(L, idx, &n);
  return {s, n};
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = asciiLower(c);
  return r;
}

// RFC 9110 tchar as a table: isalnum + strchr per byte cost ~20 instructions a byte on every
// sub-request and resp.exit header. NUL is not a tchar: a name holding one would reach an
// upstream's request head as is (strchr once let it through by matching the set's terminator).
struct TokenTable {
  bool ok[256] = {};
  constexpr TokenTable() {
    for (int c = '0'; c <= '9'; c++) ok[c] = true;
    for (int c = 'a'; c <= 'z'; c++) ok[c] = true;
    for (int c = 'A'; c <= 'Z'; c++) ok[c] = true;
    for (const char* p = "!#$%&'*+-.^_`|~"; *p; p++) ok[static_cast<unsigned char>(*p)] = true;
  }
};
constexpr TokenTable kTokenChars;

bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!kTokenChars.ok[static_cast<unsigned char>(c)]) return false;
  return true;
}

bool isFieldValue(std::string_view s) {
  for (char c : s)
    if (c == '\r' || c == '\n' || c == '\0') return false;
  return true;
}

void checkHeader(lua_State* L, std::string_view name, std::string_view value) {
  if (!isToken(name)) luaL_error(L, "invalid header name '%s'", std::string(name).c_str());
  if (!isFieldValue(value))
    luaL_error(L, "invalid value for header '%s' (CR, LF or NUL)", std::string(name).c_str());
}

// Adds name -> value to the table on top; a repeated name becomes a list, like OpenResty.
void addHeader(lua_State* L, std::string_view name, std::string_view value) {
  std::string key = lower(name);
  lua_getfield(L, -1, key.c_str());
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    pushSv(L, value);
    lua_setfield(L, -2, key.c_str());
  } else if (lua_istable(L, -1)) {
    pushSv(L, value);
    lua_rawseti(L, -2, static_cast<int>(lua_objlen(L, -2)) + 1);
    lua_pop(L, 1);
  } else {
    lua_createtable(L, 2, 0);
    lua_insert(L, -2);
    lua_rawseti(L, -2, 1);
    pushSv(L, value);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -2, key.c_str());
  }
}

// Appends views of the name -> value table at idx to *out. Only raw reads and number-to-string
// conversions happen here, so the table cannot change under the views; a converted number is
// a new string, left on the stack below the iteration key to keep it alive.
void readHeaderViews(lua_State* L, int idx, std::vector<HeaderView>* out) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "header names must be strings");
    const int vt = lua_type(L, -1);
    if (vt != LUA_TSTRING && vt != LUA_TNUMBER)
      luaL_error(L, "header '%s' must be a string", lua_tostring(L, -2));
    size_t nn, vn;
    const char* n = lua_tolstring(L, -2, &nn);
    const char* v;
    if (vt == LUA_TSTRING) {
      v = lua_tolstring(L, -1, &vn);
      lua_pop(L, 1);
    } else {
      // Converted in its stack slot (lua_next's copy, not the table's value), then kept there
      // below the key: one slot more for each such value.
      luaL_checkstack(L, 2, "too many numeric header values");
      v = lua_tolstring(L, -1, &vn);
      lua_insert(L, -2);
    }
    checkHeader(L, {n, nn}, {v, vn});
    out->push_back(HeaderView{{n, nn}, {v, vn}});
  }
}

// ---- sluice.req --------------------------------------------------------------------------

int reqGetMethod(lua_State* L) {
  pushSv(L, request(L, enter(L)).host().method());
  return 1;
}

int reqGetPath(lua_State* L) {
  pushSv(L, request(L, enter(L)).host().path());
  return 1;
}

int reqGetQuery(lua_State* L) {
  pushSv(L, request(L, enter(L)).host().query());
  return 1;
}

int reqGetUriArgs(lua_State* L) {
  std::string_view q = request(L, enter(L)).host().query();
  int max = static_cast<int>(luaL_optinteger(L, 1, 100));
  lua_newtable(L);
  int count = 0;
  while (!q.empty() && count < max) {
    size_t amp = q.find('&');
    std::string_view part = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (part.empty()) continue;
    count++;
    size_t eq = part.find('=');
    std::string key = percentDecode(part.substr(0, eq));
    lua_getfield(L, -1, key.c_str());
    bool had = !lua_isnil(L, -1);
    if (eq == std::string_view::npos)
      lua_pushboolean(L, 1);
    else
      pushSv(L, percentDecode(part.substr(eq + 1)));
    if (!had) {
      lua_setfield(L, -3, key.c_str());
      lua_pop(L, 1);
    } else if (lua_istable(L, -2)) {
      lua_rawseti(L, -2, static_cast<int>(lua_objlen(L, -2)) + 1);
      lua_pop(L, 1);
    } else {
      lua_createtable(L, 2, 0);
      lua_insert(L, -3);  // t, list, old, new
      lua_rawseti(L, -3, 2);
      lua_rawseti(L, -2, 1);
      lua_setfield(L, -2, key.c_str());
    }
  }
  return 1;
}

int reqGetHeaders(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  lua_createtable(L, 0, static_cast<int>(h.headerCount()));
  for (size_t i = 0; i < h.headerCount(); i++) addHeader(L, h.headerName(i), h.headerValue(i));
  return 1;
}

int reqGetHeaderList(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  lua_createtable(L, static_cast<int>(h.headerCount()), 0);
  for (size_t i = 0; i < h.headerCount(); i++) {
    lua_createtable(L, 2, 0);
    pushSv(L, h.headerName(i));
    lua_rawseti(L, -2, 1);
    pushSv(L, h.headerValue(i));
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, static_cast<int>(i + 1));
  }
  return 1;
}

int reqGetHeader(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  std::string_view name = checkSv(L, 1);
  for (size_t i = 0; i < h.headerCount(); i++) {
    std::string_view n = h.headerName(i);
    if (n.size() == name.size() && strncasecmp(n.data(), name.data(), n.size()) == 0) {
      pushSv(L, h.headerValue(i));
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

int reqGetBody(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  std::string_view body;
  if (!h.body(&body)) {
    lua_pushnil(L);
    lua_pushliteral(L, "request body not buffered (too large or not read)");
    return 2;
  }
  pushSv(L, body);
  return 1;
}

int reqSetHeader(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  std::string_view name = checkSv(L, 1);
  if (lua_isnoneornil(L, 2)) {
    checkHeader(L, name, "");
    h.setRequestHeader(name, "", true);
    return 0;
  }
  std::string_view value = checkSv(L, 2);
  checkHeader(L, name, value);
  h.setRequestHeader(name, value, false);
  return 0;
}

// ---- sluice.resp -------------------------------------------------------------------------

int checkStatus(lua_State* L, int idx) {
  lua_Number n = luaL_checknumber(L, idx);
  if (n != std::floor(n) || n < 100 || n > 599) luaL_error(L, "invalid HTTP status %f", n);
  return static_cast<int>(n);
}

int respExit(lua_State* L) {
  VmCore* c = enter(L);
  LuaRequest& r = request(L, c);
  requireRequestCoroutine(L, r, "sluice.resp.exit");
  if (r.responded()) luaL_error(L, "sluice.resp.exit: the request already has a response");
  int status = checkStatus(L, 1);
  std::string_view body;
  if (!lua_isnoneornil(L, 2)) body = checkSv(L, 2);
  // Views, like a sub-request's: the host copies them during respond().
  std::vector<HeaderView>& headers = c->exit_headers;
  headers.clear();
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    readHeaderViews(L, 3, &headers);
  }
  r.host().respond(status, headers, body);
  r.markResponded();
  // Ends this handler: the driver sees the yield with the request marked responded and never
  // resumes the coroutine.
  return lua_yield(L, 0);
}

int respSetHeader(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  std::string_view name = checkSv(L, 1);
  if (lua_isnoneornil(L, 2)) {
    checkHeader(L, name, "");
    h.setResponseHeader(name, "", true);
    return 0;
  }
  std::string_view value = checkSv(L, 2);
  checkHeader(L, name, value);
  h.setResponseHeader(name, value, false);
  return 0;
}

// Like OpenResty's ngx.resp.get_headers(): lower-cased name -> value, repeated -> list.
int respGetHeaders(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  size_t n = h.responseHeaderCount();
  lua_createtable(L, 0, static_cast<int>(n));
  for (size_t i = 0; i < n; i++) addHeader(L, h.responseHeaderName(i), h.responseHeaderValue(i));
  return 1;
}

int respGetHeader(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  std::string_view name = checkSv(L, 1);
  for (size_t i = 0, n = h.responseHeaderCount(); i < n; i++) {
    std::string_view k = h.responseHeaderName(i);
    if (k.size() == name.size() && strncasecmp(k.data(), name.data(), k.size()) == 0) {
      pushSv(L, h.responseHeaderValue(i));
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

int respGetStatus(lua_State* L) {
  int s = request(L, enter(L)).host().responseStatus();
  if (s == 0)
    lua_pushnil(L);
  else
    lua_pushinteger(L, s);
  return 1;
}

int respSetStatus(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  h.setResponseStatus(checkStatus(L, 1));
  return 0;
}

// ---- sluice.ctx / sluice.var (magic tables) ------------------------------------------------

const ApiFn kCtxFn{nullptr, "ctx", nullptr, kReq};
const ApiFn kVarFn{"var", "*", nullptr, kReq};
const ApiFn kSharedFn{"shared", "*", nullptr, kWorker};

int sluiceIndex(lua_State* L) {
  size_t n;
  const char* k = lua_tolstring(L, 2, &n);
  if (k && std::string_view(k, n) == "ctx") {
    VmCore* c = coreOf(L);
    if (!(kCtxFn.phases & phaseBit(c->phase)))
      phaseError(L, nullptr, "ctx", kCtxFn.phases, c->phase);
    lua_rawgeti(L, LUA_REGISTRYINDEX, request(L, c).ctxRef());
    return 1;
  }
  lua_pushnil(L);
  return 1;
}

int varIndex(lua_State* L) {
  VmCore* c = coreOf(L);
  size_t n;
  const char* k = luaL_checklstring(L, 2, &n);
  std::string_view key(k, n);
  if (!(kVarFn.phases & phaseBit(c->phase))) {
    std::string name(key);
    phaseError(L, "var", name.c_str(), kVarFn.phases, c->phase);
  }
  static constexpr std::pair<std::string_view, RequestVar> kVars[] = {
      {"client_ip", RequestVar::kClientIp}, {"route", RequestVar::kRoute},
      {"request_id", RequestVar::kRequestId}, {"member_id", RequestVar::kMemberId},
      {"device_id", RequestVar::kDeviceId}, {"item_id", RequestVar::kItemId},
      {"fingerprint", RequestVar::kFingerprint}};
  for (const auto& [name, v] : kVars) {
    if (name == key) {
      std::string_view val = request(L, c).host().var(v);
      if (val.empty())
        lua_pushnil(L);
      else
        pushSv(L, val);
      return 1;
    }
  }
  return luaL_error(L, "sluice.var.%s: no such variable (client_ip, route, request_id, member_id, "
                       "device_id, item_id, fingerprint)", k);
}

int readOnlyNewIndex(lua_State* L) {
  return luaL_error(L, "this table is read-only");
}

// ---- sluice.limit / sluice.risk ---------------------------------------------------------

int limitTake(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  std::string_view key = checkSv(L, 1);
  lua_Number cost = luaL_optnumber(L, 2, 1);
  if (cost != std::floor(cost) || cost < 0 || cost > 1e6) luaL_error(L, "invalid cost");
  LimitTakeResult r = h.limitTake(key, static_cast<uint32_t>(cost));
  if (!r.found) {
    lua_pushnil(L);
    lua_pushfstring(L, "no limit rule '%s' on this route", std::string(key).c_str());
    return 2;
  }
  lua_pushboolean(L, r.allowed);
  lua_pushnumber(L, static_cast<lua_Number>(r.remaining));
  lua_pushnumber(L, r.reset_seconds);
  return 3;
}

int riskAdd(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  std::string_view signal = checkSv(L, 1);
  lua_Number points = luaL_checknumber(L, 2);
  if (points != std::floor(points) || points < -1000 || points > 1000)
    luaL_error(L, "risk points must be an integer in [-1000, 1000]");
  // The name shows in access logs, explain records and metrics labels: a plain token.
  bool token = !signal.empty() && signal.size() <= 64;
  for (char ch : signal)
    token = token && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '.' || ch == '-');
  if (!token) luaL_error(L, "invalid risk signal name (1-64 characters of A-Z a-z 0-9 _ . -)");
  if (!h.riskAdd(signal, static_cast<int>(points)))
    luaL_error(L, "too many risk signals in one request");
  return 0;
}

int riskScore(lua_State* L) {
  lua_pushinteger(L, request(L, enter(L)).host().riskScore());
  return 1;
}

// ---- sluice.http ---------------------------------------------------------------------------

Nanos checkTimeoutMs(lua_State* L, lua_Number ms) {
  if (!(ms > 0) || ms > 600000) luaL_error(L, "timeout must be in (0, 600000] ms");
  return static_cast<Nanos>(ms * kMillis);
}

// lua_getfield(L, idx, name) with the name interned once per VM; idx must be absolute.
inline void getKey(lua_State* L, const VmCore* c, int idx, ApiKey k) {
  pushKey(L, c, k);
  lua_gettable(L, idx);
}

// Reads {pool, method, path, headers, body, timeout} of the table at idx (the pool from
// `pool_idx` if nonzero) into views in `s`. Every field read is left on the stack until the
// binding yields: a metamethod run by a later read cannot unreference a string a view points
// into. The header table's stack index goes to *headers_at (0: none); its entries are read by
// readHeaderViews once every field is read, when no more Lua code runs.
void readSpecFields(lua_State* L, VmCore* c, int idx, int pool_idx, Nanos cap, SubrequestSpec* s,
                    int* headers_at) {
  luaL_checktype(L, idx, LUA_TTABLE);
  luaL_checkstack(L, 8, "too many sub-requests");
  size_t n;
  const char* p;
  if (pool_idx) {
    p = luaL_checklstring(L, pool_idx, &n);  // converts a number in place: anchored there
  } else {
    getKey(L, c, idx, ApiKey::kPool);
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "each request needs a 'pool' (string)");
    p = lua_tolstring(L, -1, &n);
  }
  s->pool = {p, n};
  if (s->pool.empty() || s->pool.size() > 128) luaL_error(L, "invalid pool name");
  getKey(L, c, idx, ApiKey::kMethod);
  s->method = "GET";
  if (!lua_isnil(L, -1)) {
    // The whole string, not up to a NUL: "GET\0x" is not a method.
    p = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : nullptr;
    if (!p || !isToken({p, n})) luaL_error(L, "invalid method");
    s->method = {p, n};
  }
  getKey(L, c, idx, ApiKey::kPath);
  if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "each request needs a 'path' (string)");
  p = lua_tolstring(L, -1, &n);
  s->path = {p, n};
  if (s->path.empty() || s->path[0] != '/' || s->path.size() > 8192)
    luaL_error(L, "path must start with '/' and be at most 8192 bytes");
  for (char ch : s->path)
    if (static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f)
      luaL_error(L, "path contains a space or control character");
  getKey(L, c, idx, ApiKey::kHeaders);
  *headers_at = 0;
  if (!lua_isnil(L, -1)) {
    *headers_at = lua_gettop(L);
    luaL_checktype(L, *headers_at, LUA_TTABLE);
  }
  getKey(L, c, idx, ApiKey::kBody);
  s->body = {};
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "body must be a string");
    p = lua_tolstring(L, -1, &n);
    if (n > c->options.max_subrequest_body) luaL_error(L, "request body too large");
    s->body = {p, n};
  }
  getKey(L, c, idx, ApiKey::kTimeout);
  s->timeout = c->options.default_subrequest_timeout;
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "timeout must be a number of milliseconds");
    s->timeout = checkTimeoutMs(L, lua_tonumber(L, -1));
  }
  lua_pop(L, 1);
  if (cap > 0 && s->timeout > cap) s->timeout = cap;
  s->max_body = c->options.max_subrequest_body;
}

// http.request and http.multi after their own arguments: `count` parts, read from the table at
// `list` (http.multi) or from argument 2 with the pool in argument 1 (http.request). Every part
// is checked before any is started, so a bad argument starts nothing.
int readStartAndYield(lua_State* L, VmCore* c, LuaRequest& r, bool multi, size_t count, Nanos cap) {
  // From a metamethod or an iterator a C function runs, the yield below would fail after the
  // parts had started; it also keeps this binding from re-entering itself while the VM's
  // scratch vectors below are in use.
  if (!lua_isyieldable(L))
    luaL_error(L, "sluice.http.%s cannot be called where the handler cannot yield (a metamethod "
                  "run by a C function)", multi ? "multi" : "request");
  if (r.subrequestsStarted() + count > c->options.max_subrequests)
    luaL_error(L, "too many sub-requests for one request (max %d)",
               static_cast<int>(c->options.max_subrequests));
  std::vector<SubrequestSpec>& specs = c->spec_scratch;
  std::vector<HeaderView>& headers = c->spec_headers;
  std::vector<uint32_t>& at = c->spec_header_at;
  specs.resize(count);
  at.resize(count);
  headers.clear();
  for (size_t i = 0; i < count; i++) {
    int headers_at;
    if (multi) {
      lua_rawgeti(L, 1, static_cast<int>(i + 1));
      if (!lua_istable(L, -1))
        luaL_error(L, "sluice.http.multi: request %d is not a table", static_cast<int>(i + 1));
      // All parts start together, so the total deadline is a cap on each part's own timeout.
      readSpecFields(L, c, lua_gettop(L), 0, cap, &specs[i], &headers_at);
    } else {
      readSpecFields(L, c, 2, 1, cap, &specs[i], &headers_at);
    }
    at[i] = static_cast<uint32_t>(headers_at);
  }
  // The header views, now that no Lua code runs until the yield; then the spans (the vector
  // was still growing).
  for (size_t i = 0; i < count; i++) {
    const size_t begin = headers.size();
    if (at[i]) readHeaderViews(L, static_cast<int>(at[i]), &headers);
    at[i] = static_cast<uint32_t>(headers.size() - begin);
  }
  for (size_t i = 0, begin = 0; i < count; begin += at[i], i++)
    specs[i].headers = std::span<const HeaderView>(headers.data() + begin, at[i]);
  r.startSubrequests(multi, std::span<const SubrequestSpec>(specs.data(), count));
  return lua_yield(L, 0);
}

int httpRequest(lua_State* L) {
  VmCore* c = enter(L);
  LuaRequest& r = request(L, c);
  requireRequestCoroutine(L, r, "sluice.http.request");
  return readStartAndYield(L, c, r, false, 1, 0);
}

int httpMulti(lua_State* L) {
  VmCore* c = enter(L);
  LuaRequest& r = request(L, c);
  requireRequestCoroutine(L, r, "sluice.http.multi");
  luaL_checktype(L, 1, LUA_TTABLE);
  Nanos total = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_getfield(L, 2, "total_timeout");
    if (!lua_isnil(L, -1)) {
      if (lua_type(L, -1) != LUA_TNUMBER) luaL_error(L, "total_timeout must be a number of ms");
      total = checkTimeoutMs(L, lua_tonumber(L, -1));
    }
    lua_pop(L, 1);
  }
  size_t n = lua_objlen(L, 1);
  if (n > c->options.max_fanout)
    luaL_error(L, "sluice.http.multi: %d requests exceed the fan-out cap of %d",
               static_cast<int>(n), static_cast<int>(c->options.max_fanout));
  if (n == 0) {
    lua_newtable(L);
    return 1;
  }
  return readStartAndYield(L, c, r, true, n, total);
}

int sleepFn(lua_State* L) {
  VmCore* c = enter(L);
  LuaRequest& r = request(L, c);
  requireRequestCoroutine(L, r, "sluice.sleep");
  lua_Number s = luaL_checknumber(L, 1);
  if (!(s >= 0) || s > 600) luaL_error(L, "sleep must be in [0, 600] seconds");
  if (!c->worker) luaL_error(L, "sluice.sleep: no worker");
  if (!lua_isyieldable(L))
    luaL_error(L, "sluice.sleep cannot be called where the handler cannot yield (a metamethod "
                  "run by a C function)");
  r.startSleep(static_cast<Nanos>(s * kSeconds));
  return lua_yield(L, 0);
}

// ---- sluice.json -------------------------------------------------------------------------

constexpr size_t kJsonOutKeep = 64 * 1024;

int jsonEncodeFn(lua_State* L) {
  VmCore* c = enter(L);
  luaL_checkany(L, 1);
  std::string err;
  std::string& out = c->json_out;
  if (!jsonEncode(L, 1, c->options.json, &out, &err)) {
    lua_pushnil(L);
    pushSv(L, err);
    return 2;
  }
  pushSv(L, out);
  if (out.capacity() > kJsonOutKeep) std::string().swap(out);  // one huge document: let it go
  return 1;
}

int jsonDecodeFn(lua_State* L) {
  VmCore* c = enter(L);
  std::string_view text = checkSv(L, 1);
  std::string err;
  if (!jsonDecode(L, text, c->options.json, &err)) {
    lua_pushnil(L);
    pushSv(L, err);
    return 2;
  }
  return 1;
}

int jsonArray(lua_State* L) {
  enter(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  pushJsonArrayMeta(L);
  lua_setmetatable(L, 1);
  return 1;
}

// ---- sluice.shared -----------------------------------------------------------------------

const char* kDictMeta = "sluice.shared_dict";

SharedDict* checkDict(lua_State* L) {
  enter(L);
  auto* p = static_cast<SharedDictPtr*>(luaL_checkudata(L, 1, kDictMeta));
  return p->get();
}

std::string_view checkKey(lua_State* L, int idx) {
  std::string_view k = checkSv(L, idx);
  if (k.empty() || k.size() > 65535) luaL_error(L, "invalid key (empty or longer than 65535)");
  return k;
}

Nanos optTtl(lua_State* L, int idx) {
  lua_Number t = luaL_optnumber(L, idx, 0);
  if (!(t >= 0) || t > 1e9) luaL_error(L, "ttl must be a number of seconds >= 0");
  return static_cast<Nanos>(t * kSeconds);
}

int dictGet(lua_State* L) {
  SharedDict* d = checkDict(L);
  SharedValue v;
  if (!d->get(checkKey(L, 2), &v)) {
    lua_pushnil(L);
    return 1;
  }
  if (auto* b = std::get_if<bool>(&v))
    lua_pushboolean(L, *b);
  else if (auto* n = std::get_if<double>(&v))
    lua_pushnumber(L, *n);
  else
    pushSv(L, std::get<std::string>(v));
  return 1;
}

int dictSet(lua_State* L) {
  SharedDict* d = checkDict(L);
  std::string_view key = checkKey(L, 2);
  Nanos ttl = optTtl(L, 4);
  if (lua_isnoneornil(L, 3)) {
    d->remove(key);
    lua_pushboolean(L, 1);
    return 1;
  }
  SharedValue v;
  switch (lua_type(L, 3)) {
    case LUA_TBOOLEAN: v = static_cast<bool>(lua_toboolean(L, 3)); break;
    case LUA_TNUMBER: v = static_cast<double>(lua_tonumber(L, 3)); break;
    case LUA_TSTRING: v = std::string(checkSv(L, 3)); break;
    default: return luaL_error(L, "shared dict values must be strings, numbers or booleans");
  }
  int evicted = 0;
  if (d->set(key, v, ttl, &evicted) != DictStatus::kOk) {
    lua_pushnil(L);
    lua_pushliteral(L, "no memory");
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_pushnil(L);
  lua_pushboolean(L, evicted > 0);
  return 3;
}

int dictIncr(lua_State* L) {
  SharedDict* d = checkDict(L);
  std::string_view key = checkKey(L, 2);
  lua_Number delta = luaL_optnumber(L, 3, 1);
  double init = 0;
  bool has_init = !lua_isnoneornil(L, 4);
  if (has_init) init = luaL_checknumber(L, 4);
  Nanos ttl = optTtl(L, 5);
  double out = 0;
  switch (d->incr(key, delta, has_init ? &init : nullptr, ttl, &out)) {
    case DictStatus::kOk: lua_pushnumber(L, out); return 1;
    case DictStatus::kNotFound: lua_pushnil(L); lua_pushliteral(L, "not found"); return 2;
    case DictStatus::kNotANumber: lua_pushnil(L); lua_pushliteral(L, "not a number"); return 2;
    case DictStatus::kNoMemory: break;
  }
  lua_pushnil(L);
  lua_pushliteral(L, "no memory");
  return 2;
}

int dictDelete(lua_State* L) {
  SharedDict* d = checkDict(L);
  d->remove(checkKey(L, 2));
  return 0;
}

int dictTtl(lua_State* L) {
  SharedDict* d = checkDict(L);
  Nanos t;
  if (!d->ttl(checkKey(L, 2), &t)) {
    lua_pushnil(L);
    lua_pushliteral(L, "not found");
    return 2;
  }
  lua_pushnumber(L, static_cast<double>(t) / kSeconds);
  return 1;
}

int dictGc(lua_State* L) {
  auto* p = static_cast<SharedDictPtr*>(luaL_checkudata(L, 1, kDictMeta));
  p->~SharedDictPtr();
  return 0;
}

int sharedIndex(lua_State* L) {
  VmCore* c = coreOf(L);
  std::string_view name = checkSv(L, 2);
  if (!(kSharedFn.phases & phaseBit(c->phase))) {
    std::string n(name);
    phaseError(L, "shared", n.c_str(), kSharedFn.phases, c->phase);
  }
  SharedDictPtr d = c->dicts ? c->dicts->find(name) : nullptr;
  if (!d) {
    lua_pushnil(L);
    return 1;
  }
  void* mem = lua_newuserdata(L, sizeof(SharedDictPtr));
  new (mem) SharedDictPtr(std::move(d));
  luaL_getmetatable(L, kDictMeta);
  lua_setmetatable(L, -2);
  return 1;
}

// ---- sluice.timer ------------------------------------------------------------------------

int timerAdd(lua_State* L, bool every) {
  VmCore* c = enter(L);
  lua_Number s = luaL_checknumber(L, 1);
  if (!(s >= 0) || s > 86400 || (every && s < 0.001))
    luaL_error(L, every ? "interval must be in [0.001, 86400] seconds"
                        : "delay must be in [0, 86400] seconds");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int nargs = lua_gettop(L) - 2;
  int args_ref = LUA_NOREF;
  if (nargs > 0) {
    lua_createtable(L, nargs, 0);
    for (int i = 1; i <= nargs; i++) {
      lua_pushvalue(L, 2 + i);
      lua_rawseti(L, -2, i);
    }
    args_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_pushvalue(L, 2);
  int fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  Nanos d = static_cast<Nanos>(s * kSeconds);
  if (!addTimer(c, d, every ? d : 0, fn_ref, args_ref)) {
    luaL_unref(L, LUA_REGISTRYINDEX, fn_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, args_ref);
    lua_pushnil(L);
    lua_pushliteral(L, "too many pending timers (or the generation is retiring)");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

int timerAt(lua_State* L) { return timerAdd(L, false); }
int timerEvery(lua_State* L) { return timerAdd(L, true); }

// ---- misc --------------------------------------------------------------------------------

int logFn(lua_State* L) {
  VmCore* c = enter(L);
  int level = static_cast<int>(luaL_checkinteger(L, 1));
  if (level < 0 || level > 3) luaL_error(L, "invalid log level");
  std::string msg;
  lua_Debug ar;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
    msg += ar.short_src;
    msg += ':';
    msg += std::to_string(ar.currentline);
    msg += ": ";
  }
  int n = lua_gettop(L);
  for (int i = 2; i <= n; i++) {
    size_t len;
    const char* s = lua_tolstring(L, i, &len);
    if (s)
      msg.append(s, len);
    else
      msg += luaL_typename(L, i);
    if (msg.size() > 8192) break;
  }
  if (c->worker)
    c->worker->log(static_cast<LogLevel>(level), msg);
  else
    SLUICE_LOG(static_cast<LogLevel>(level), "lua: %s", msg.c_str());
  return 0;
}

int nowFn(lua_State* L) {
  enter(L);
  lua_pushnumber(L, static_cast<double>(wallMicros()) / 1e6);
  return 1;
}

// sluice.limit.set_key(name, value): what a `lua:NAME` limit key reads for this request.
int limitSetKey(lua_State* L) {
  RequestHost& h = request(L, enter(L)).host();
  std::string_view name = checkSv(L, 1);
  std::string_view value = checkSv(L, 2);
  if (name.empty() || name.size() > 64) luaL_error(L, "limit.set_key: name must be 1..64 bytes");
  // Keys are hashed, never stored by the limiter; the bound only keeps one request's memory small.
  if (value.size() > 4096) luaL_error(L, "limit.set_key: value longer than 4096 bytes");
  if (!h.setLimitKey(name, value)) luaL_error(L, "limit.set_key: too many keys on this request");
  return 0;
}

int getPhase(lua_State* L) {
  VmCore* c = enter(L);
  lua_pushstring(L, phaseName(c->phase));
  return 1;
}

const ApiFn kApi[] = {
    {"req", "get_method", reqGetMethod, kReq},
    {"req", "get_path", reqGetPath, kReq},
    {"req", "get_query", reqGetQuery, kReq},
    {"req", "get_uri_args", reqGetUriArgs, kReq},
    {"req", "get_headers", reqGetHeaders, kReq},
    {"req", "get_header_list", reqGetHeaderList, kReq},
    {"req", "get_header", reqGetHeader, kReq},
    {"req", "get_body", reqGetBody, kYield},
    {"req", "read_body", reqGetBody, kYield},
    {"req", "set_header", reqSetHeader, bits({Phase::kRewrite, Phase::kAccess})},
    {"resp", "exit", respExit, kYield},
    {"resp", "set_header", respSetHeader, kYield | phaseBit(Phase::kHeaderFilter)},
    {"resp", "get_headers", respGetHeaders, phaseBit(Phase::kHeaderFilter)},
    {"resp", "get_header", respGetHeader, phaseBit(Phase::kHeaderFilter)},
    {"resp", "get_status", respGetStatus,
     bits({Phase::kHeaderFilter, Phase::kBodyFilter, Phase::kLog})},
    {"resp", "set_status", respSetStatus, phaseBit(Phase::kHeaderFilter)},
    {"limit", "take", limitTake, kYield},
    {"limit", "set_key", limitSetKey, phaseBit(Phase::kRewrite)},
    {"risk", "add", riskAdd, kYield},
    {"risk", "score", riskScore, kYield | bits({Phase::kHeaderFilter, Phase::kLog})},
    {"http", "request", httpRequest, kYield},
    {"http", "multi", httpMulti, kYield},
    {"json", "encode", jsonEncodeFn, kAll},
    {"json", "decode", jsonDecodeFn, kAll},
    {"json", "array", jsonArray, kAll},
    {"timer", "at", timerAt, kTimers},
    {"timer", "every", timerEvery, kTimers},
    {nullptr, "sleep", sleepFn, kYield},
    {nullptr, "log", logFn, kAll},
    {nullptr, "now", nowFn, kAll},
    {nullptr, "get_phase", getPhase, kAll},
};

const ApiFn kDictApi[] = {
    {"shared", "get", dictGet, kWorker},       {"shared", "set", dictSet, kWorker},
    {"shared", "incr", dictIncr, kWorker},     {"shared", "delete", dictDelete, kWorker},
    {"shared", "ttl", dictTtl, kWorker},
};

void pushFn(lua_State* L, const ApiFn& fn) {
  lua_pushlightuserdata(L, const_cast<ApiFn*>(&fn));
  lua_pushcclosure(L, fn.fn, 1);
}

// A metatable that answers __index with `index` and refuses getmetatable/setmetatable.
void pushMagicMeta(lua_State* L, lua_CFunction index) {
  lua_createtable(L, 0, 3);
  lua_pushcfunction(L, index);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
}

}  // namespace

void registerApi(lua_State* L) {
  {
    VmCore* c = coreOf(L);
    static constexpr const char* kKeys[] = {"pool", "method", "path", "headers",
                                            "body", "timeout", "status", "err"};
    static_assert(std::size(kKeys) == static_cast<size_t>(ApiKey::kCount));
    for (size_t i = 0; i < std::size(kKeys); i++) {
      lua_pushstring(L, kKeys[i]);
      c->key_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
  }
  // Shared dict userdata metatable (methods checked for phase like every binding).
  luaL_newmetatable(L, kDictMeta);
  lua_createtable(L, 0, 5);
  for (const auto& fn : kDictApi) {
    pushFn(L, fn);
    lua_setfield(L, -2, fn.name);
  }
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, dictGc);
  lua_setfield(L, -2, "__gc");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);

  lua_newtable(L);  // sluice
  for (const auto& fn : kApi) {
    if (fn.table) {
      lua_getfield(L, -1, fn.table);
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, fn.table);
      }
      pushFn(L, fn);
      lua_setfield(L, -2, fn.name);
      lua_pop(L, 1);
    } else {
      pushFn(L, fn);
      lua_setfield(L, -2, fn.name);
    }
  }
  lua_getfield(L, -1, "json");
  lua_pushlightuserdata(L, nullptr);
  lua_setfield(L, -2, "null");
  lua_pop(L, 1);

  lua_newtable(L);
  pushMagicMeta(L, varIndex);
  lua_pushcfunction(L, readOnlyNewIndex);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "var");

  lua_newtable(L);
  pushMagicMeta(L, sharedIndex);
  lua_pushcfunction(L, readOnlyNewIndex);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "shared");

  static constexpr std::pair<const char*, int> kLevels[] = {
      {"DEBUG", 0}, {"INFO", 1}, {"WARN", 2}, {"ERR", 3}};
  for (const auto& [name, v] : kLevels) {
    lua_pushinteger(L, v);
    lua_setfield(L, -2, name);
  }

  pushMagicMeta(L, sluiceIndex);
  lua_setmetatable(L, -2);
}

}  // namespace sluice::lua
