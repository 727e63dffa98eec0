-- The instance lease, renewed by the health beat. KEYS: lease. ARGV: our value, ttl ms.
-- 1 = renewed, 2 = had lapsed and is ours again, 0 = someone else holds it.
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
