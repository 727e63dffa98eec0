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
-- record, its event and callback written), else nil. `n` is the record's history
-- length when the caller knows it (finish.lua just wrote it), else nil.
-- info: {to, from, meta, url} of the message ('' where absent); awaiting: the
-- awaiting-reports set, or '' when the profile has none.
local function apply_report(rec, job, part, outcome, stat, err, now, parts, info,
                            profile, events, maxlen, callbacks, awaiting, n)
  local mine = cjson.encode({outcome, stat, err})
  local final, fstat, ferr = outcome, stat, err
  if #parts > 1 then
    redis.call('HSET', rec, 'dlr:' .. part, mine)
    final = 'delivered'
    for _, p in ipairs(parts) do
      local r = redis.call('HGET', rec, 'dlr:' .. p)
      if not r then return nil end
      r = cjson.decode(r)
      if r[1] ~= 'delivered' and final == 'delivered' then final, fstat, ferr = r[1], r[2], r[3] end
    end
  end
  if awaiting ~= '' then redis.call('ZREM', awaiting, job) end
  if n then n = n + 1 else n = redis.call('HINCRBY', rec, 'n', 1) end
  local name, value = step(n, final, now, 'stat ' .. fstat .. ' err ' .. ferr)
  local f = {'status', final, 'updated_at', now, 'n', n, name, value,
             'dlr_stat', fstat, 'dlr_err', ferr, 'dlr:' .. part, mine}
  if final ~= 'delivered' then
    f[#f + 1] = 'error_code'; f[#f + 1] = 'dlr_' .. string.lower(fstat)
    f[#f + 1] = 'error_raw'; f[#f + 1] = 'stat:' .. fstat .. ' err:' .. ferr
  end
  redis.call('HSET', rec, unpack(f))
  local ev = {'id', job, 'status', final, 'at', now, 'stat', fstat, 'err', ferr,
              'provider_message_id', part, 'profile', profile}
  if info[1] ~= '' then ev[#ev + 1] = 'to'; ev[#ev + 1] = info[1] end
  if info[2] ~= '' then ev[#ev + 1] = 'from'; ev[#ev + 1] = info[2] end
  if info[3] ~= '' then ev[#ev + 1] = 'meta'; ev[#ev + 1] = info[3] end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ev))
  post(callbacks, info[4], ev)
  return final
end
