-- Producers' jobs, a batch in one call: for each, its `queued` record first, then the
-- stream entry, so no worker can record `sending` before `queued` exists, and a job
-- id that has a record already (a repeat) is not enqueued again. The new entry owns
-- the record.
-- One profile's jobs (every key in its slot). KEYS: event stream, callbacks stream, work
-- stream, then each item's record, then (only when `index_stamp` is not '') the
-- recipient index of the call's UTC day (keys.py's `recipient_index`: each new record
-- goes there as `<to>|<index_stamp>|<id>` at score 0, so the console finds a
-- recipient's messages without reading the event streams).
-- ARGV[1]: msgpack ENQUEUE_CALL {now, retention, events maxlen, profile, index stamp,
-- items}; each item an ENQUEUED {job id, encoded job, {record field, value, ...}}
-- (common.lua; router/store/ledger.py); the fields `to`, `from`, `meta`, `account`,
-- `media` (an MMS's URLs, a JSON list) also go on the event, `status_callback_url`
-- names where it is posted.
-- Returns a flat array: verdict (ok | duplicate), entry id ('' for a duplicate).
local args = cmsgpack.unpack(ARGV[1])
local now, ttl = args[ENQUEUE_CALL_NOW], args[ENQUEUE_CALL_RETENTION]
local maxlen, profile = args[ENQUEUE_CALL_EVENTS_MAXLEN], args[ENQUEUE_CALL_PROFILE]
local items = args[ENQUEUE_CALL_ITEMS]
local stamp = args[ENQUEUE_CALL_INDEX_STAMP]
local out = {}
-- The recipient index's new members, added by one ZADD (per 500) after the loop: no
-- key per recipient, no call per message.
local indexed = {}

for i, it in ipairs(items) do
  local rec = KEYS[3 + i]
  if redis.call('EXISTS', rec) == 1 then
    out[#out + 1] = 'duplicate'; out[#out + 1] = ''
  else
    local entry = redis.call('XADD', KEYS[3], '*', 'job', it[ENQUEUED_JOB])
    local name, value = step(1, 'queued', now, '', '', now)
    local fields = {'created_at', now, 'owner', entry, 'status', 'queued', 'n', 1,
                    name, value}
    local ev = {'id', it[ENQUEUED_ID], 'profile', profile, 'status', 'queued', 'at', now}
    local url, to = nil, nil
    local given = it[ENQUEUED_FIELDS]
    for i = 1, #given, 2 do
      local field, v = given[i], given[i + 1]
      -- (`profile` is the key's: not stored again)
      if field == 'meta' then
        fields[#fields + 1] = field; fields[#fields + 1] = v
      elseif field ~= 'profile' then
        put_long(fields, field, v)
      end
      if field == 'to' or field == 'from' or field == 'meta' or field == 'account'
          or field == 'media' then
        ev[#ev + 1] = field; ev[#ev + 1] = v
      elseif field == 'status_callback_url' then
        url = v
      end
      if field == 'to' then to = v end
    end
    redis.call('HSET', rec, unpack(fields))
    redis.call('EXPIRE', rec, ttl)
    if stamp ~= '' and to and to ~= '' then
      indexed[#indexed + 1] = 0
      indexed[#indexed + 1] = to .. '|' .. stamp .. '|' .. it[ENQUEUED_ID]
    end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ev))
    post(KEYS[2], url, ev)
    out[#out + 1] = 'ok'; out[#out + 1] = entry
  end
end
if #indexed > 0 then index_recipients(KEYS[4 + #items], indexed, now, ttl) end
return out
