-- One part of a long message from an SMPP client, kept until the whole message is
-- there (router/smpp_server/reassembly.py). Every key is in the account's hash tag.
-- KEYS[1]: the message's parts hash (keys.long_message_parts); KEYS[2]: the
-- account's due set (keys.long_message_due), member = KEYS[1].
-- ARGV: seq, the part packed, total, a new job id (kept only by the first part to
-- arrive), time-out (ms), lease (ms), the hash's TTL (s).
-- Returns {job id, state}: 'held' (stored, more to come), 'done' / 'expired' (the
-- message was decided already: enqueued / recorded rejected; nothing stored),
-- 'complete' followed by the parts' packed data in order (this call completed the
-- set, or found it completed by an instance whose lease passed: the caller enqueues
-- it; the due score becomes the lease, after which a sweeper or the next part
-- enqueues it if the caller could not).
if redis.replicate_commands then redis.replicate_commands() end -- TIME before writes (Redis < 7)
local group, due = KEYS[1], KEYS[2]
local seq, total = ARGV[1], tonumber(ARGV[3])
local state = redis.call('HMGET', group, 'id', 'done', 'expired')
if state[2] then return {state[1], 'done'} end
if state[3] then return {state[1], 'expired'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = state[1]
if not id then
  id = ARGV[4]
  redis.call('HSET', group, 'id', id, 'total', total, 'n', 0, 'first', now)
  redis.call('ZADD', due, now + tonumber(ARGV[5]), group)
end
-- A part sent again (the client timed out waiting) replaces its copy, counted once.
local n
if redis.call('HSET', group, 'p' .. seq, ARGV[2]) == 1 then
  n = redis.call('HINCRBY', group, 'n', 1)
else
  n = tonumber(redis.call('HGET', group, 'n'))
end
redis.call('EXPIRE', group, ARGV[7])
if n < total then return {id, 'held'} end
if redis.call('HSETNX', group, 'complete', now) == 0 then
  -- Completed before: being enqueued by the instance that completed it, unless its
  -- lease passed (that instance died): then this call takes it over, as a sweeper would.
  local score = redis.call('ZSCORE', due, group)
  if not score or tonumber(score) > now then return {id, 'held'} end
end
redis.call('ZADD', due, now + tonumber(ARGV[6]), group)
local out = {id, 'complete'}
for i = 1, total do out[#out + 1] = redis.call('HGET', group, 'p' .. i) or '' end
return out
