-- Early reports whose deadline passed: their message was sent again under another id,
-- or never will be. KEYS: early hash, early zset. ARGV: EARLY {now, batch size}
-- (common.lua). Returns how many were dropped.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[EARLY_NOW], 'LIMIT', 0,
                       ARGV[EARLY_BATCH])
if #due > 0 then
  redis.call('HDEL', KEYS[1], unpack(due))
  redis.call('ZREM', KEYS[2], unpack(due))
end
return #due
