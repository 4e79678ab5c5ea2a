-- Lease take: grant an instance up to N units of a global budget for the current fixed window.
-- Instances spend their lease locally and come back for more, so a cluster-scope limit costs a
-- Redis round trip per lease instead of per request. The clock is Redis TIME.
--
-- KEYS[1]  hash {w = window index, used = units granted in window w}
-- ARGV[1]  window length in milliseconds, > 0
-- ARGV[2]  global limit: units per window
-- ARGV[3]  units requested; < 0 = give unused units of the current window back
-- Returns  {granted units (0..requested), window_end_ms, used after, now_ms}
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local want = tonumber(ARGV[3])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idx = math.floor(now / window)
local window_end = (idx + 1) * window

local state = redis.call('HMGET', KEYS[1], 'w', 'used')
local used = 0
if tonumber(state[1]) == idx then used = tonumber(state[2] or '0') end

local granted = 0
if want < 0 then
  used = math.max(0, used + want)  -- a return; the lease of an old window has expired anyway
  granted = want
else
  granted = math.max(0, math.min(want, limit - used))
  used = used + granted
end
redis.call('HSET', KEYS[1], 'w', string.format('%d', idx), 'used', string.format('%d', used))
redis.call('PEXPIREAT', KEYS[1], string.format('%d', window_end + window))
return {granted, window_end, used, now}
