-- Ack and delete in one step: acknowledged work has no reason to stay.
-- KEYS: work stream. ARGV: group, then the entry ids. Returns how many were acknowledged.
local n = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
return n
