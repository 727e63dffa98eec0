-- One status change of one message (the slow paths: scheduled, retries, rejections,
-- expiry): the record, its event and (for a final status) the acknowledgement of the
-- work entry, atomically. The hot path uses sending.lua and finish.lua instead.
-- KEYS: record, event stream, work stream to ack (or a placeholder), the profile's
-- awaiting-reports set (or a placeholder), callbacks stream, then index keys (provider
-- message ids) each set to the job id with the record's retention.
-- ARGV: TRANSITION {owner, now, status, retention, mode ('' | 'replay' | 'unsent': only
-- a record still queued or scheduled), note, events
-- maxlen, field count, event count, ack group ('' = no ack), ack entry, job id, report
-- deadline ('' = none), connector ('' = none)} (common.lua; router/store/ledger.py),
-- then field pairs, then event pairs (a `profile` field is the key's: not stored). A
-- connector is written in the step appended (the caller puts it in the event).
-- Returns {verdict, previous status}; verdict: ok | duplicate | done. The ack happens
-- whatever the verdict: a duplicate or an already-final record has nothing left to do.
local owner, now = ARGV[TRANSITION_OWNER], ARGV[TRANSITION_NOW]
local status, ttl = ARGV[TRANSITION_STATUS], ARGV[TRANSITION_RETENTION]
local group, job = ARGV[TRANSITION_GROUP], ARGV[TRANSITION_JOB]
local deadline = ARGV[TRANSITION_REPORT_DEADLINE]
if group ~= '' then
  redis.call('XACK', KEYS[3], group, ARGV[TRANSITION_ENTRY])
  redis.call('XDEL', KEYS[3], ARGV[TRANSITION_ENTRY])
end
local cur = redis.call('HMGET', KEYS[1], 'status', 'owner')
local st, own = cur[1], cur[2]
if ARGV[TRANSITION_MODE] == 'unsent' and st ~= 'queued' and st ~= 'scheduled' then
  -- A client's cancel: only a message no worker has begun sending.
  return {'done', st or ''}
end
if st then
  if own and own ~= owner then return {'duplicate', st} end
  if st == 'sent' or st == 'delivered' or st == 'undelivered'
     or st == 'failed' or st == 'expired'
     or (st == 'rejected' and ARGV[TRANSITION_MODE] ~= 'replay') then
    return {'done', st}
  end
else
  st = ''
  redis.call('HSET', KEYS[1], 'created_at', now)
end
set_status(KEYS[1], status, now, ARGV[TRANSITION_NOTE], ARGV[TRANSITION_CONNECTOR])
redis.call('HSET', KEYS[1], 'owner', owner)
local first = TRANSITION_COUNT + 1  -- ARGV index of the first field pair
local nfields = tonumber(ARGV[TRANSITION_FIELD_COUNT])
local nevent = tonumber(ARGV[TRANSITION_EVENT_COUNT])
for i = first, first + 2 * nfields - 1, 2 do
  if ARGV[i] == 'meta' then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  elseif ARGV[i] ~= 'profile' then
    local pieces, old = {}, redis.call('HGET', KEYS[1], ARGV[i])
    local count = put_long(pieces, ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[1], unpack(pieces))
    drop_pieces(KEYS[1], ARGV[i], count, old)
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
for k = 6, #KEYS do redis.call('SET', KEYS[k], job, 'EX', ttl) end
if deadline ~= '' then redis.call('ZADD', KEYS[4], deadline, job) end
local ev = {}
for i = first + 2 * nfields, first + 2 * (nfields + nevent) - 1 do ev[#ev + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[TRANSITION_EVENTS_MAXLEN], '*', unpack(ev))
to_callbacks(KEYS[1], KEYS[5], ev)
return {'ok', st}
