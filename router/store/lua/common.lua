-- Shared by every record script (prepended to each).
--
-- Record shape: a hash with `status`, `updated_at`, `owner`, `n` (history length) and
-- one field per history step, `h<i>` = "status|time|note": a change appends one field
-- instead of decoding and re-encoding the whole history.

-- Field positions, by name: `fields{'a', 'b'}` is {a = 1, b = 2, _count = 2} (a
-- NamedTuple's field names never start with '_').
local function fields(names)
  local at = {_count = #names}
  for i, name in ipairs(names) do at[name] = i end
  return at
end

-- The records the router sends (msgpack arrays), read by name: `it[SENDING.to]`. The
-- same names in the same order as their NamedTuples in router/store/ledger.py (a test
-- compares them): a new field is added there and here, nowhere else.
local SENDING = fields{'id', 'owner', 'replay', 'sender', 'to', 'text', 'meta', 'url',
                       'sticky_key', 'sticky_ttl'}
local FINISHED = fields{'id', 'entry', 'step', 'status', 'note', 'url', 'to', 'sender',
                        'meta', 'segments', 'error_code', 'error_raw', 'error', 'part_ids',
                        'forms'}
local REPORT = fields{'outcome', 'stat', 'err', 'candidates', 'job'}
local ENQUEUED = fields{'id', 'job', 'fields'}
-- The batch calls' ARGV[1], each ending with its items.
local SENDING_CALL = fields{'now', 'profile', 'retention', 'events_maxlen', 'items'}
local FINISH_CALL = fields{'now', 'profile', 'retention', 'events_maxlen', 'group',
                           'report_deadline', 'items'}
local REPORT_CALL = fields{'now', 'events_maxlen', 'profile', 'keep_until', 'reports'}
local ENQUEUE_CALL = fields{'now', 'retention', 'events_maxlen', 'profile', 'items'}
-- The fixed ARGV of the scripts called with plain arguments.
local TRANSITION = fields{'owner', 'now', 'status', 'retention', 'mode', 'note',
                          'events_maxlen', 'field_count', 'event_count', 'group', 'entry',
                          'job', 'report_deadline'}
local MISSING = fields{'now', 'events_maxlen', 'profile', 'note'}
local EARLY = fields{'now', 'batch'}
-- A delivery report as kept (JSON, in the early hash and a record's `dlr:<part>`).
local DLR = fields{'outcome', 'stat', 'err'}

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
-- info: {to =, from =, meta =, url =} of the message ('' where absent); awaiting: the
-- awaiting-reports set, or '' when the profile has none.
local function apply_report(rec, job, part, outcome, stat, err, now, parts, info,
                            profile, events, maxlen, callbacks, awaiting, n)
  local mine = cjson.encode({outcome, stat, err})  -- a DLR
  local final, fstat, ferr = outcome, stat, err
  if #parts > 1 then
    redis.call('HSET', rec, 'dlr:' .. part, mine)
    final = 'delivered'
    for _, p in ipairs(parts) do
      local r = redis.call('HGET', rec, 'dlr:' .. p)
      if not r then return nil end
      r = cjson.decode(r)
      if r[DLR.outcome] ~= 'delivered' and final == 'delivered' then
        final, fstat, ferr = r[DLR.outcome], r[DLR.stat], r[DLR.err]
      end
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
  if info.to ~= '' then ev[#ev + 1] = 'to'; ev[#ev + 1] = info.to end
  if info.from ~= '' then ev[#ev + 1] = 'from'; ev[#ev + 1] = info.from end
  if info.meta ~= '' then ev[#ev + 1] = 'meta'; ev[#ev + 1] = info.meta end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ev))
  post(callbacks, info.url, ev)
  return final
end
