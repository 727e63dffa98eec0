-- After inbound_publish.lua. KEYS: parts hash, partial zset, inbound stream, events.
-- ARGV: events maxlen, profile. Gives up waiting: whatever parts arrived go on the
-- stream, in order, flagged incomplete.
if redis.call('ZREM', KEYS[2], KEYS[1]) == 0 then return 0 end
local all = redis.call('HGETALL', KEYS[1])
local seqs = {}
for i = 1, #all, 2 do
  if all[i] ~= 'head' then seqs[#seqs + 1] = tonumber(all[i]) end
end
table.sort(seqs)
local parts = {}
for _, s in ipairs(seqs) do
  parts[#parts + 1] = cjson.decode(redis.call('HGET', KEYS[1], tostring(s)))
end
if #parts == 0 then return 0 end
local head = redis.call('HGET', KEYS[1], 'head') or '{}'
local encoded = cjson.encode(parts)
local id = redis.call('XADD', KEYS[3], '*', 'message', head, 'parts', encoded, 'incomplete', '1')
publish(KEYS[4], ARGV[1], ARGV[2], id, head, encoded, '1', '')
redis.call('DEL', KEYS[1])
return 1
