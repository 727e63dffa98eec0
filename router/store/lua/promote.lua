-- Promote due schedule members back onto the stream. Member layout:
-- "<origin>|<attempt>|<job bytes>" (origin and attempt never contain '|').
-- KEYS: schedule zset, work stream. ARGV: now, most members to move. Returns how many moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  local a = string.find(m, '|', 1, true)
  local b = string.find(m, '|', a + 1, true)
  redis.call('XADD', KEYS[2], '*', 'job', string.sub(m, b + 1),
             'origin', string.sub(m, 1, a - 1), 'attempt', string.sub(m, a + 1, b - 1))
  redis.call('ZREM', KEYS[1], m)
end
return #due
