-- Put a dead letter back on the work stream (as a replay) and delete it.
-- KEYS: dead-letter stream, work stream. ARGV: the dead letter's entry id.
-- Returns 1 moved, 0 no such entry, -1 an entry without a job.
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #rows == 0 then return 0 end
local f = rows[1][2]
local job, origin = nil, nil
for i = 1, #f, 2 do
  if f[i] == 'job' then job = f[i + 1] elseif f[i] == 'origin' then origin = f[i + 1] end
end
if not job then return -1 end
if origin then
  redis.call('XADD', KEYS[2], '*', 'job', job, 'origin', origin, 'replay', '1')
else
  redis.call('XADD', KEYS[2], '*', 'job', job, 'replay', '1')
end
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
