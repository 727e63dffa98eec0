-- A sweeper takes one long message past its due time, so one instance only decides
-- it: the due score moves on by a lease (another instance's sweeper takes it again
-- only if this one dies before deciding). An incomplete message is marked 'expired'
-- here, so a part arriving after cannot complete it while it is being rejected.
-- KEYS[1]: the account's due set; KEYS[2]: the message's parts hash (a member).
-- ARGV: lease (ms).
-- Returns false (not due, taken by another, or gone) or the hash's fields and values.
if redis.replicate_commands then redis.replicate_commands() end -- TIME before writes (Redis < 7)
local due, group = KEYS[1], KEYS[2]
local score = redis.call('ZSCORE', due, group)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not score or tonumber(score) > now then return false end
local state = redis.call('HMGET', group, 'id', 'done', 'complete', 'expired')
if not state[1] or state[2] then
  redis.call('ZREM', due, group) -- gone (its TTL) or decided already
  return false
end
redis.call('ZADD', due, now + tonumber(ARGV[1]), group)
if not state[3] and not state[4] then redis.call('HSET', group, 'expired', now) end
return redis.call('HGETALL', group)
