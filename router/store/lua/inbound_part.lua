-- After inbound_publish.lua. KEYS: parts hash, partial zset, inbound stream, events.
-- ARGV: seq, part (JSON), total, deadline, ttl, message fields (JSON), events maxlen,
-- profile. Adds a part; when all `total` are there, moves the message (parts in order)
-- onto the stream (and publishes it) and forgets the parts. Returns 1 if complete.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], 'head', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], KEYS[1])
local total = tonumber(ARGV[3])
if redis.call('HLEN', KEYS[1]) - 1 < total then return 0 end
local parts = {}
for i = 1, total do
  local p = redis.call('HGET', KEYS[1], tostring(i))
  if not p then return 0 end
  parts[i] = cjson.decode(p)
end
local encoded = cjson.encode(parts)
local id = redis.call('XADD', KEYS[3], '*', 'message', ARGV[6], 'parts', encoded,
                      'incomplete', '0')
publish(KEYS[4], ARGV[7], ARGV[8], id, ARGV[6], encoded, '0', '')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
