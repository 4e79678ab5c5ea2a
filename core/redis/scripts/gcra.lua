-- GCRA (a leaky bucket kept as one timestamp) check-and-charge for a cluster-scope rate limit.
-- The clock is Redis TIME, so every sluice instance judges against the same time; instance wall
-- clocks are never used.
--
-- KEYS[1]  bucket key; holds the theoretical arrival time (TAT) in microseconds
-- ARGV[1]  emission interval in microseconds (1e6 / rate per second), > 0
-- ARGV[2]  burst: units an idle bucket grants at once (>= 1)
-- ARGV[3]  cost in units (default 1); 0 = look without charging; < 0 = give units back
--          (the limit phase uncharges when a later rule rejects the request)
-- Returns  {allowed 1|0, remaining units, retry_after_us (0 when allowed), reset_after_us}
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3] or '1')

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local capacity = burst * interval  -- how far the TAT may run ahead of now

local function store(new_tat)
  -- %d: tostring() would print 16-digit microsecond values in exponent form and lose precision.
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', ttl_ms))
end

if cost < 0 then
  local new_tat = math.max(tat + cost * interval, now)
  store(new_tat)
  return {1, math.floor((capacity - (new_tat - now)) / interval), 0, new_tat - now}
end

local new_tat = tat + cost * interval
local ahead = new_tat - now
if ahead > capacity then
  -- Denied: nothing is charged.
  return {0, math.floor((capacity - (tat - now)) / interval), ahead - capacity, tat - now}
end
if cost > 0 then store(new_tat) end
return {1, math.floor((capacity - ahead) / interval), 0, ahead}
