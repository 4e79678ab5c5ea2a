-- Concurrency lease release: give back units acquired by concurrency_acquire.lua.
--
-- KEYS[1]  the same hash as concurrency_acquire.lua
-- ARGV[1]  instance id
-- ARGV[2]  units to release (default 1)
-- ARGV[3]  TTL in milliseconds: the instance's remaining holding is renewed for it
-- Returns  {held by this instance after}
local id = ARGV[1]
local units = tonumber(ARGV[2] or '1')
local ttl = tonumber(ARGV[3] or '0')

local mine = tonumber(redis.call('HGET', KEYS[1], 'n:' .. id) or '0') - units
if mine <= 0 then
  -- Never below zero: a release after this instance's holding expired must not steal others' units.
  redis.call('HDEL', KEYS[1], 'n:' .. id, 'e:' .. id)
  return {0}
end
redis.call('HSET', KEYS[1], 'n:' .. id, string.format('%d', mine))
if ttl > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'e:' .. id, string.format('%d', now + ttl))
end
return {mine}
