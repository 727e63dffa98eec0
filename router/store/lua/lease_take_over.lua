-- KEYS: lease. ARGV: value seen, new value, ttl ms. Replaces a dead holder's lease
-- only if it is still the one we looked at. Returns 1 if taken.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
