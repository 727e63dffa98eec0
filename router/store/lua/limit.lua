-- An account's rate and daily quota, for one take of `count` messages, atomically
-- (every instance calls the same keys, so the limits hold across instances).
-- KEYS[1]: the rate's bucket (theoretical arrival time, microseconds, Redis' clock);
-- KEYS[2]: the day's quota counter.
-- ARGV: count, interval (microseconds one message takes at the account's tps; 0 = no
-- rate), burst (microseconds of credit the bucket holds), quota (-1 = none), the
-- quota key's TTL (seconds).
-- Returns {0, 0} allowed and counted; {1, wait_us} throttled; {2, used} quota
-- (nothing counted when refused).
if redis.replicate_commands then redis.replicate_commands() end -- TIME before writes (Redis < 7)
local count = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local quota = tonumber(ARGV[4])

local used = 0
if quota >= 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used + count > quota then return {2, used} end
end

local tat, now
if interval > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  -- A take larger than the whole burst passes when the bucket is full, and its debt
  -- makes the next ones wait: the long-run rate holds and no batch is refused forever.
  local need = count * interval
  if need > burst then need = burst end
  local wait = (tat - now) + need - burst
  if wait > 0 then return {1, string.format('%.0f', wait)} end
end

if quota >= 0 then
  redis.call('INCRBY', KEYS[2], count)
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if interval > 0 then
  tat = tat + count * interval
  -- %.0f: microseconds since 1970 have 16 digits, more than tostring keeps.
  redis.call('SET', KEYS[1], string.format('%.0f', tat),
    'PX', math.floor((tat - now) / 1000) + 1000)
end
return {0, 0}
