-- Sale gate: give units back to an item's stock quota (order cancelled, checkout failed).
--
-- KEYS[1]  remaining units of the item's sale quota
-- ARGV[1]  units to return (default 1)
-- ARGV[2]  optional cap (the configured quota): remaining never goes above it, so a return
--          replayed by a retry cannot create stock
-- Returns  remaining after; -1 when the key does not exist (no quota: nothing is created)
local units = tonumber(ARGV[1] or '1')
local cap = tonumber(ARGV[2] or '-1')
local left = redis.call('GET', KEYS[1])
if not left then return -1 end
left = tonumber(left) + math.max(0, units)
if cap >= 0 and left > cap then left = cap end
redis.call('SET', KEYS[1], string.format('%d', left), 'KEEPTTL')
return left
