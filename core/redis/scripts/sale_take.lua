-- Sale gate: atomically take units of an item's stock quota. All or nothing, never below zero,
-- so concurrent checkouts on any number of instances cannot oversell.
--
-- KEYS[1]  remaining units of the item's sale quota (an integer the operator SETs)
-- ARGV[1]  units to take (default 1)
-- Returns  {taken (ARGV[1], or 0 when not enough is left), remaining after}
--          remaining = -1: the key does not exist (no quota configured for the item)
local units = tonumber(ARGV[1] or '1')
local left = redis.call('GET', KEYS[1])
if not left then return {0, -1} end
left = tonumber(left)
if units <= 0 or left < units then return {0, left} end
left = redis.call('DECRBY', KEYS[1], units)
return {units, left}
