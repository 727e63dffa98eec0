-- Give back a take of `count` messages whose jobs were never stored (the enqueue after
-- the take failed): the rate's bucket and the day's quota as if it had not happened.
-- KEYS[1]: the rate's bucket; KEYS[2]: the day's quota counter (as limit.lua).
-- ARGV: count, interval (microseconds one message takes; 0 = no rate).
local count = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat > 0 then
    redis.call('SET', KEYS[1], string.format('%.0f', tat - count * interval), 'KEEPTTL')
  end
end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if used > 0 then redis.call('DECRBY', KEYS[2], math.min(count, used)) end
return 1
