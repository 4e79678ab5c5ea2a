-- Sliding-window counter take (the two-window approximation: the previous window's count
-- weighted by how much of it still overlaps the sliding window, plus the current one's).
-- The clock is Redis TIME.
--
-- KEYS[1]  hash: field = window index (now_ms // window_ms), value = units counted in it
-- ARGV[1]  window length in milliseconds, > 0
-- ARGV[2]  limit: units per sliding window
-- ARGV[3]  cost in units (default 1); 0 = look; < 0 = give units back to the current window
-- Returns  {allowed 1|0, remaining units, retry_after_ms (0 when allowed), window_end_ms}
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3] or '1')

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idx = math.floor(now / window)
local window_end = (idx + 1) * window
local cur_field = string.format('%d', idx)
local prev_field = string.format('%d', idx - 1)

local cur = tonumber(redis.call('HGET', KEYS[1], cur_field) or '0')
local prev = tonumber(redis.call('HGET', KEYS[1], prev_field) or '0')
local weight = (window_end - now) / window  -- share of the previous window still inside
local estimate = prev * weight + cur

if cost < 0 then
  local back = math.min(-cost, cur)
  if back > 0 then redis.call('HINCRBY', KEYS[1], cur_field, -back) end
  return {1, math.floor(limit - (estimate - back)), 0, window_end}
end

if estimate + cost > limit then
  -- Denied. Retry when the previous window's weight has decayed enough, or at the window end
  -- when the current window alone is over.
  local retry = window_end - now
  if prev > 0 and cur + cost <= limit then
    local w = (limit - cur - cost) / prev
    retry = math.ceil((weight - w) * window)
  end
  return {0, math.max(0, math.floor(limit - estimate)), math.max(1, retry), window_end}
end

if cost > 0 then
  redis.call('HINCRBY', KEYS[1], cur_field, cost)
  -- Windows older than the previous one can never count again.
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if f ~= cur_field and f ~= prev_field then redis.call('HDEL', KEYS[1], f) end
  end
  redis.call('PEXPIRE', KEYS[1], 2 * window)
end
return {1, math.floor(limit - estimate - cost), 0, window_end}
