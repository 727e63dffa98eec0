-- One status change of one message (the slow paths: scheduled, retries, rejections,
-- expiry): the record, its event and (for a final status) the acknowledgement of the
-- work entry, atomically. The hot path uses sending.lua and finish.lua instead.
-- KEYS: record, event stream, work stream to ack (or a placeholder), the profile's
-- awaiting-reports set (or a placeholder), callbacks stream, then index keys (provider
-- message ids) each set to the job id with the record's retention.
-- ARGV: owner, now, status, ttl, mode ('' | 'replay'), note, events maxlen,
-- field count, event count, ack group ('' = no ack), ack entry, job id, report
-- deadline ('' = none), then field pairs, then event pairs.
-- Returns {verdict, previous status}; verdict: ok | duplicate | done. The ack happens
-- whatever the verdict: a duplicate or an already-final record has nothing left to do.
if ARGV[10] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[10], ARGV[11])
  redis.call('XDEL', KEYS[3], ARGV[11])
end
local cur = redis.call('HMGET', KEYS[1], 'status', 'owner')
local st, own = cur[1], cur[2]
if st then
  if own and own ~= ARGV[1] then return {'duplicate', st} end
  if st == 'sent' or st == 'delivered' or st == 'undelivered'
     or st == 'failed' or st == 'expired' or (st == 'rejected' and ARGV[5] ~= 'replay') then
    return {'done', st}
  end
else
  st = ''
  redis.call('HSET', KEYS[1], 'created_at', ARGV[2])
end
set_status(KEYS[1], ARGV[3], ARGV[2], ARGV[6])
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
if ARGV[3] == 'sending' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
local first = 14
local nfields, nevent = tonumber(ARGV[8]), tonumber(ARGV[9])
for i = first, first + 2 * nfields - 1, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
for k = 6, #KEYS do redis.call('SET', KEYS[k], ARGV[12], 'EX', ARGV[4]) end
if ARGV[13] ~= '' then redis.call('ZADD', KEYS[4], ARGV[13], ARGV[12]) end
local ev = {}
for i = first + 2 * nfields, first + 2 * (nfields + nevent) - 1 do ev[#ev + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', unpack(ev))
to_callbacks(KEYS[1], KEYS[5], ev)
return {'ok', st}
