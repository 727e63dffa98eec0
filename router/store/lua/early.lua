-- Early reports whose deadline passed: their message was sent again under another id,
-- or never will be. KEYS: early hash, early zset. ARGV: now, batch size.
-- Returns how many were dropped.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then
  redis.call('HDEL', KEYS[1], unpack(due))
  redis.call('ZREM', KEYS[2], unpack(due))
end
return #due
