-- An account's rate and daily quota, for one take of `count` messages, atomically
-- (every instance calls the same keys, so the limits hold across instances). Both run
-- on Redis' clock (TIME): the rate's bucket and the quota's UTC day.
-- KEYS[1]: the rate's bucket (theoretical arrival time, microseconds);
-- KEYS[2]: the quota hash (field: UTC day -> messages counted that day; the other
-- days' fields are removed when a take counts).
-- ARGV: count, interval (microseconds one message takes at the account's tps; 0 = no
-- rate), burst (microseconds of credit the bucket holds), quota (-1 = none), the
-- quota hash's TTL (seconds).
-- Returns {0, day} allowed and counted (the day counted in); {1, wait_us} throttled;
-- {2, used, seconds to the end of the day} quota (nothing counted when refused).
if redis.replicate_commands then redis.replicate_commands() end -- TIME before writes (Redis < 7)
local count = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local quota = tonumber(ARGV[4])

local t = redis.call('TIME')
local seconds = tonumber(t[1])
local now = seconds * 1000000 + tonumber(t[2])
local day = utc_day(seconds)

local used = 0
if quota >= 0 then
  used = tonumber(redis.call('HGET', KEYS[2], day) or '0')
  if used + count > quota then return {2, used, 86400 - seconds % 86400} end
end

local tat
if interval > 0 then
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
  redis.call('HINCRBY', KEYS[2], day, count)
  -- Yesterday's count is of no use once today's starts: at most one day is kept.
  for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do
    if field ~= day then redis.call('HDEL', KEYS[2], field) end
  end
  redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if interval > 0 then
  tat = tat + count * interval
  -- %.0f: microseconds since 1970 have 16 digits, more than tostring keeps.
  redis.call('SET', KEYS[1], string.format('%.0f', tat),
    'PX', math.floor((tat - now) / 1000) + 1000)
end
return {0, day}
