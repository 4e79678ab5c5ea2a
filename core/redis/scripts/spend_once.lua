-- Spent set for single-use tickets (pass tokens, challenge answers): the first spend wins.
--
-- KEYS[1]  the ticket's key (e.g. "{pt}:spent:<token id>")
-- ARGV[1]  TTL in milliseconds (the ticket's remaining lifetime; after it the ticket is invalid
--          anyway, so the key may go)
-- ARGV[2]  who spent it (instance id), kept for debugging
-- Returns  {1, ttl_ms} on the first spend; {0, ms the spent mark still lives} when already spent
if redis.call('SET', KEYS[1], ARGV[2] or '1', 'NX', 'PX', ARGV[1]) then
  return {1, tonumber(ARGV[1])}
end
return {0, redis.call('PTTL', KEYS[1])}
