-- Producers' jobs, a batch in one call: for each, its `queued` record first, then the
-- stream entry, so no worker can record `sending` before `queued` exists, and a job
-- id that has a record already (a repeat) is not enqueued again. The new entry owns
-- the record.
-- One profile's jobs (every key in its slot). KEYS: event stream, callbacks stream, work
-- stream, then each item's record.
-- ARGV[1]: msgpack {now, ttl, events maxlen, profile, items}; each item {job id, encoded
-- job, {record field, value, ...}}; the fields `to`, `from`, `meta` also go on the
-- event, `status_callback_url` names where it is posted.
-- Returns a flat array: verdict (ok | duplicate), entry id ('' for a duplicate).
local args = cmsgpack.unpack(ARGV[1])
local now, ttl, maxlen, profile = args[1], args[2], args[3], args[4]
local out = {}
for i, it in ipairs(args[5]) do
  local rec = KEYS[3 + i]
  if redis.call('EXISTS', rec) == 1 then
    out[#out + 1] = 'duplicate'; out[#out + 1] = ''
  else
    local entry = redis.call('XADD', KEYS[3], '*', 'job', it[2])
    local name, value = step(1, 'queued', now, '')
    local fields = {'created_at', now, 'owner', entry, 'status', 'queued',
                    'updated_at', now, 'n', 1, name, value}
    local ev = {'id', it[1], 'profile', profile, 'status', 'queued', 'at', now}
    local url = nil
    local given = it[3]
    for i = 1, #given, 2 do
      local field, v = given[i], given[i + 1]
      fields[#fields + 1] = field; fields[#fields + 1] = v
      if field == 'to' or field == 'from' or field == 'meta' then
        ev[#ev + 1] = field; ev[#ev + 1] = v
      elseif field == 'status_callback_url' then
        url = v
      end
    end
    redis.call('HSET', rec, unpack(fields))
    redis.call('EXPIRE', rec, ttl)
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ev))
    post(KEYS[2], url, ev)
    out[#out + 1] = 'ok'; out[#out + 1] = entry
  end
end
return out
