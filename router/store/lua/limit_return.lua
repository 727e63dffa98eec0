-- Give back a take of `count` messages whose jobs were never stored (the enqueue after
-- the take failed): the rate's bucket and the day's quota as if it had not happened.
-- KEYS[1]: the rate's bucket; KEYS[2]: the quota hash (as limit.lua).
-- ARGV: count, interval (microseconds one message takes; 0 = no rate), the UTC day the
-- take counted in ('' = today on Redis' clock).
if redis.replicate_commands then redis.replicate_commands() end -- TIME before writes (Redis < 7)
local count = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local day = ARGV[3]
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', tat - count * interval), 'KEEPTTL')
  end
end
if day == '' then day = utc_day(tonumber(redis.call('TIME')[1])) end
local used = tonumber(redis.call('HGET', KEYS[2], day) or '0')
if used > 0 then redis.call('HINCRBY', KEYS[2], day, -math.min(count, used)) end
return 1
