#pragma once
// The trusted Lua half of the sandbox, run once per VM with the full globals before any policy
// code: builds each module's environment, `require` over the bundle, and the schema and
// module-shape checks (easier to state in Lua than over the C stack).
namespace sluice::lua {

inline constexpr const char* kBootstrapLua = R"LUA(
local C, api = ...
local type, pairs, ipairs, next, tostring, error, pcall, select =
      type, pairs, ipairs, next, tostring, error, pcall, select
local setmetatable, rawget, setfenv = setmetatable, rawget, setfenv
local getmt = debug.getmetatable
local floor, huge = math.floor, math.huge
local concat, sort = table.concat, table.sort

local M = {}
local loaded, loading = {}, {}

-- getmetatable("") would hand out the real string table, shared by every policy.
getmt("").__metatable = false

local function copy(t, except)
  local r = {}
  for k, v in pairs(t) do
    if not (except and except[k]) then r[k] = v end
  end
  return r
end

local BASE = { "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber",
               "tostring", "type", "unpack", "xpcall", "rawequal", "rawget", "rawset",
               "setmetatable", "getmetatable" }
local base_fns = {}
for _, n in ipairs(BASE) do base_fns[n] = _G[n] end
local real_collectgarbage = collectgarbage
local os_time, os_clock, os_date = os.time, os.clock, os.date

-- Every environment gets its own copies of the libraries and of `sluice`, so rawset on one
-- policy's `string` or `sluice.req` cannot change another policy's.
local function sluice_copy()
  local s = {}
  for k, v in pairs(api) do
    if type(v) == "table" then
      local mt = getmt(v)
      local c = copy(v)
      if mt then setmetatable(c, mt) end
      s[k] = c
    else
      s[k] = v
    end
  end
  return setmetatable(s, getmt(api))
end

local function new_env()
  local env = copy(base_fns)
  env._VERSION = _VERSION
  env.string = copy(string, { dump = true })
  env.table = copy(table)
  env.math = copy(math)
  env.bit = copy(bit)
  env.coroutine = copy(coroutine)
  env.os = { time = os_time, clock = os_clock, date = os_date }
  env.sluice = sluice_copy()
  env.require = M.require
  local log = env.sluice.log
  env.print = function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    log(api.INFO, concat(parts, "\t"))
  end
  env.collectgarbage = function(opt)
    if opt == "count" then return real_collectgarbage("count") end
    error("collectgarbage is only available as collectgarbage('count') in policies", 2)
  end
  env.loadstring = function(s, chunkname)
    if type(s) ~= "string" then return nil, "loadstring expects a string" end
    local fn, err = C.compile_text(s, chunkname)
    if not fn then return nil, err end
    setfenv(fn, env)
    return fn
  end
  env.load = function(chunk, chunkname)
    if type(chunk) ~= "string" then return nil, "load accepts only source strings in policies" end
    return env.loadstring(chunk, chunkname)
  end
  env._G = env
  return env
end

function M.require(name)
  if type(name) ~= "string" then error("require expects a module name", 2) end
  local v = loaded[name]
  if v ~= nil then return v end
  if loading[name] then error("require loop on module '" .. name .. "'", 2) end
  local fn, err = C.compile_module(name)
  if not fn then error(err, 2) end
  loading[name] = true
  setfenv(fn, new_env())
  local ok, res = pcall(fn, name)
  loading[name] = nil
  if not ok then error(res, 0) end
  if res == nil then res = true end
  loaded[name] = res
  return res
end

-- Module shape ----------------------------------------------------------------------------
local PHASES = { rewrite = true, access = true, aggregate = true, balancer = true,
                 header_filter = true, body_filter = true, log = true }
local KNOWN = { name = true, version = true, priority = true, schema = true, phases = true,
                init_worker = true, configure = true, destroy = true }
local TYPES = { string = true, number = true, integer = true, boolean = true, table = true,
                array = true, object = true }

local function check_spec(spec, path)
  if type(spec) ~= "table" then return "schema." .. path .. " must be a table" end
  if not TYPES[spec.type] then
    return "schema." .. path .. ".type must be one of string, number, integer, boolean, table, array, object"
  end
  if spec.enum ~= nil and type(spec.enum) ~= "table" then return "schema." .. path .. ".enum must be a list" end
  if spec.items ~= nil then
    local items = type(spec.items) == "string" and { type = spec.items } or spec.items
    local e = check_spec(items, path .. ".items")
    if e then return e end
  end
  if spec.fields ~= nil then
    if type(spec.fields) ~= "table" then return "schema." .. path .. ".fields must be a table" end
    for k, v in pairs(spec.fields) do
      local e = check_spec(v, path .. "." .. tostring(k))
      if e then return e end
    end
  end
  return nil
end

-- Returns nil when `mod` is a well-formed policy, else a message.
function M.check_policy(mod)
  if type(mod.name) ~= "string" or mod.name == "" then return "policy module needs a string 'name'" end
  if mod.version ~= nil and type(mod.version) ~= "string" and type(mod.version) ~= "number" then
    return "policy '" .. mod.name .. "': 'version' must be a string"
  end
  if mod.priority ~= nil and (type(mod.priority) ~= "number" or mod.priority ~= floor(mod.priority)) then
    return "policy '" .. mod.name .. "': 'priority' must be an integer"
  end
  for k in pairs(mod) do
    if not KNOWN[k] then return "policy '" .. mod.name .. "': unknown field '" .. tostring(k) .. "'" end
  end
  if type(mod.phases) ~= "table" then return "policy '" .. mod.name .. "': 'phases' must be a table" end
  for k, v in pairs(mod.phases) do
    if not PHASES[k] then
      return "policy '" .. mod.name .. "': '" .. tostring(k) .. "' is not a phase " ..
             "(phases: rewrite, access, aggregate, balancer, header_filter, body_filter, log)"
    end
    if type(v) ~= "function" then return "policy '" .. mod.name .. "': phases." .. k .. " must be a function" end
  end
  for _, k in ipairs({ "init_worker", "configure", "destroy" }) do
    if mod[k] ~= nil and type(mod[k]) ~= "function" then
      return "policy '" .. mod.name .. "': '" .. k .. "' must be a function"
    end
  end
  if mod.schema ~= nil then
    if type(mod.schema) ~= "table" then return "policy '" .. mod.name .. "': 'schema' must be a table" end
    for k, v in pairs(mod.schema) do
      local e = check_spec(v, tostring(k))
      if e then return "policy '" .. mod.name .. "': " .. e end
    end
  end
  return nil
end

-- Schema check of a config ---------------------------------------------------------------
local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local r = {}
  for k, x in pairs(v) do r[k] = deep_copy(x) end
  return setmetatable(r, getmt(v))
end

local function is_array(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  for i = 1, n do if t[i] == nil then return false end end
  return true
end

local check_fields

local function check_value(spec, v, path)
  local t = spec.type
  local ok
  if t == "integer" then ok = type(v) == "number" and v == floor(v) and v > -huge and v < huge
  elseif t == "array" then ok = type(v) == "table" and is_array(v)
  elseif t == "object" then ok = type(v) == "table"
  else ok = type(v) == t end
  if not ok then
    local got = type(v)
    if got == "userdata" then got = "null" end
    return "field '" .. path .. "': expected " .. t .. ", got " .. got
  end
  if spec.min ~= nil then
    local n = (type(v) == "number") and v or (type(v) == "string" and #v) or (type(v) == "table" and #v)
    if n < spec.min then return "field '" .. path .. "': must be at least " .. tostring(spec.min) end
  end
  if spec.max ~= nil then
    local n = (type(v) == "number") and v or (type(v) == "string" and #v) or (type(v) == "table" and #v)
    if n > spec.max then return "field '" .. path .. "': must be at most " .. tostring(spec.max) end
  end
  if spec.enum ~= nil then
    local found = false
    for _, e in ipairs(spec.enum) do if e == v then found = true break end end
    if not found then
      local names = {}
      for i, e in ipairs(spec.enum) do names[i] = tostring(e) end
      return "field '" .. path .. "': must be one of " .. concat(names, ", ")
    end
  end
  if t == "array" and spec.items ~= nil then
    local items = type(spec.items) == "string" and { type = spec.items } or spec.items
    for i = 1, #v do
      local e = check_value(items, v[i], path .. "[" .. i .. "]")
      if e then return e end
    end
  end
  if t == "object" and spec.fields ~= nil then
    return check_fields(spec.fields, v, path .. ".")
  end
  return nil
end

check_fields = function(schema, conf, prefix)
  for k in pairs(conf) do
    if type(k) ~= "string" or schema[k] == nil then
      return "field '" .. prefix .. tostring(k) .. "': unknown field"
    end
  end
  local names = {}
  for k in pairs(schema) do names[#names + 1] = k end
  sort(names)
  for _, k in ipairs(names) do
    local spec = schema[k]
    local v = conf[k]
    if v == nil and spec.default ~= nil then
      v = deep_copy(spec.default)
      conf[k] = v
    end
    if v == nil then
      if spec.required then return "field '" .. prefix .. k .. "': required" end
    else
      local e = check_value(spec, v, prefix .. k)
      if e then return e end
    end
  end
  return nil
end

-- Returns the config with defaults filled in, or nil and a message.
function M.apply_schema(schema, conf)
  if schema == nil then return conf end
  local e = check_fields(schema, conf, "")
  if e then return nil, e end
  return conf
end

return M
)LUA";

}  // namespace sluice::lua
