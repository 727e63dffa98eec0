-- A long message decided: enqueued ('done') or recorded rejected ('expired'). Its parts
-- are dropped and it leaves the due set; the hash keeps the job id for `keep` ms so a
-- part the client sends again is answered with the same id. 'retry': not decided (the
-- enqueue was refused for now: the account's rate, Redis): due again in `keep` ms.
-- KEYS[1]: the message's parts hash; KEYS[2]: the account's due set.
-- ARGV: 'done' | 'expired' | 'retry', keep (ms).
if redis.replicate_commands then redis.replicate_commands() end -- TIME before writes (Redis < 7)
local group, due, state, keep = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if state == 'retry' then
  redis.call('ZADD', due, 'XX', now + keep, group)
  return 1
end
if redis.call('EXISTS', group) == 1 then
  local drop = {}
  for _, field in ipairs(redis.call('HKEYS', group)) do
    if string.sub(field, 1, 1) == 'p' then drop[#drop + 1] = field end
  end
  if #drop > 0 then redis.call('HDEL', group, unpack(drop)) end
  redis.call('HSET', group, state, now)
  redis.call('PEXPIRE', group, keep)
end
redis.call('ZREM', due, group)
return 1
