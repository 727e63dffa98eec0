-- A producer's job: its `queued` record first, then the stream entry, in one step, so
-- no worker can record `sending` before `queued` exists, and a job id that has a record
-- already (a repeat) is not enqueued again. The new entry owns the record.
-- KEYS: record, event stream, work stream. ARGV: now, ttl, events maxlen, callbacks
-- stream, job id, encoded job, field count, then field pairs, then event pairs.
-- Returns {verdict, entry id}; verdict: ok | duplicate.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'duplicate', ''} end
local entry = redis.call('XADD', KEYS[3], '*', 'job', ARGV[6])
local name, value = step(1, 'queued', ARGV[1], '')
local fields = {'created_at', ARGV[1], 'owner', entry, 'status', 'queued',
                'updated_at', ARGV[1], 'n', 1, name, value}
local nfields = tonumber(ARGV[7])
for i = 8, 7 + 2 * nfields do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[2])
local ev = {}
for i = 8 + 2 * nfields, #ARGV do ev[#ev + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ev))
local url = nil
for i = 8, 7 + 2 * nfields, 2 do
  if ARGV[i] == 'status_callback_url' then url = ARGV[i + 1] end
end
post(ARGV[4], url, ev)
return {'ok', entry}
