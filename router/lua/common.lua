-- Shared by every record script (prepended to each).
--
-- Record shape: a hash with `status`, `updated_at`, `owner`, `n` (history length) and
-- one field per history step, `h<i>` = "status|time|note": a change appends one field
-- instead of decoding and re-encoding the whole history.

local function step(n, status, now, note)
  return 'h' .. n, status .. '|' .. now .. '|' .. note
end

-- Append a step and set the status (reads the history length: for the slow paths).
local function set_status(key, status, now, note)
  local n = redis.call('HINCRBY', key, 'n', 1)
  local name, value = step(n, status, now, note)
  redis.call('HSET', key, 'status', status, 'updated_at', now, name, value)
end

-- A message with a status_callback_url also gets the event on the callbacks stream
-- (with the url, which stays out of the event stream: it may carry a token).
local function post(stream, url, ev)
  if url and url ~= '' then
    redis.call('XADD', stream, '*', 'url', url, unpack(ev))
  end
end

local function to_callbacks(key, stream, ev)
  post(stream, redis.call('HGET', key, 'status_callback_url'), ev)
end

-- One part's delivery report on a `sent` record. `parts` lists every part's id (one
-- for a short message). Returns the final status once every part has reported (the
-- record, its event and callback written), else nil.
-- info: {to, from, meta, url} of the message ('' where absent).
local function apply_report(rec, job, part, outcome, stat, err, now, parts, info,
                            profile, events, maxlen, callbacks, awaiting)
  redis.call('HSET', rec, 'dlr:' .. part, cjson.encode({outcome, stat, err}))
  local final, fstat, ferr = 'delivered', stat, err
  for _, p in ipairs(parts) do
    local r = redis.call('HGET', rec, 'dlr:' .. p)
    if not r then return nil end
    r = cjson.decode(r)
    if r[1] ~= 'delivered' and final == 'delivered' then final, fstat, ferr = r[1], r[2], r[3] end
  end
  redis.call('ZREM', awaiting, job)
  set_status(rec, final, now, 'stat ' .. fstat .. ' err ' .. ferr)
  redis.call('HSET', rec, 'dlr_stat', fstat, 'dlr_err', ferr)
  if final ~= 'delivered' then
    redis.call('HSET', rec, 'error_code', 'dlr_' .. string.lower(fstat), 'error_raw',
               'stat:' .. fstat .. ' err:' .. ferr)
  end
  local ev = {'id', job, 'status', final, 'at', now, 'stat', fstat, 'err', ferr,
              'provider_message_id', part, 'profile', profile}
  if info[1] ~= '' then ev[#ev + 1] = 'to'; ev[#ev + 1] = info[1] end
  if info[2] ~= '' then ev[#ev + 1] = 'from'; ev[#ev + 1] = info[2] end
  if info[3] ~= '' then ev[#ev + 1] = 'meta'; ev[#ev + 1] = info[3] end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ev))
  post(callbacks, info[4], ev)
  return final
end
