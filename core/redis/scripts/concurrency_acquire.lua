-- Concurrency lease acquire (cluster-wide "active requests" limit). Each instance's holding has
-- its own expiry, renewed by every acquire (and by acquire with 0 units, the heartbeat), so the
-- slots of an instance that crashed free themselves after its TTL. The clock is Redis TIME.
--
-- KEYS[1]  hash: "n:<instance>" = units held, "e:<instance>" = expiry (ms since epoch)
-- ARGV[1]  instance id
-- ARGV[2]  limit: units held cluster-wide at most
-- ARGV[3]  units to acquire (default 1); 0 = renew this instance's TTL only
-- ARGV[4]  TTL in milliseconds of this instance's holding
-- Returns  {granted 1|0, total held after, held by this instance after}
local id = ARGV[1]
local limit = tonumber(ARGV[2])
local units = tonumber(ARGV[3] or '1')
local ttl = tonumber(ARGV[4])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Drop expired instances and count what the live ones hold.
local fields = redis.call('HGETALL', KEYS[1])
local held, expiry = {}, {}
for i = 1, #fields, 2 do
  local f, v = fields[i], fields[i + 1]
  local kind, inst = string.sub(f, 1, 2), string.sub(f, 3)
  if kind == 'n:' then held[inst] = tonumber(v) elseif kind == 'e:' then expiry[inst] = tonumber(v) end
end
local total = 0
for inst, n in pairs(held) do
  if (expiry[inst] or 0) <= now then
    redis.call('HDEL', KEYS[1], 'n:' .. inst, 'e:' .. inst)
    held[inst] = nil
  else
    total = total + n
  end
end

local mine = held[id] or 0
local granted = 0
if units <= 0 or total + units <= limit then
  granted = 1
  if units > 0 then
    mine = mine + units
    total = total + units
  end
end
if mine > 0 then
  redis.call('HSET', KEYS[1], 'n:' .. id, string.format('%d', mine), 'e:' .. id, string.format('%d', now + ttl))
  -- The key outlives its longest-lived holding, never less.
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return {granted, total, mine}
