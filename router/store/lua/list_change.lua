-- A block or allow list entry added or removed. KEYS: the list set, its version
-- counter. ARGV: SADD | SREM, the entry. The version moves in the same step as the set
-- (so no reader caches the change under the old version), and only when the set did
-- change. Returns 1 if the set changed.
local changed = redis.call(ARGV[1], KEYS[1], ARGV[2])
if changed == 1 then redis.call('INCR', KEYS[2]) end
return changed
