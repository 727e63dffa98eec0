-- Shared by every record script (prepended to each).
--
-- Record shape: a hash with `status`, `updated_at`, `owner`, `n` (history length) and
-- one field per history step, `h<i>` = "status|time|note": a change appends one field
-- instead of decoding and re-encoding the whole history. A step that went over a
-- connector (an outcome, a retry) has `c<i>` = its name beside `h<i>`, and the record's
-- `connector` names the latest such.

-- The records the router sends (msgpack arrays, or plain ARGV), each field's position
-- named once: `<RECORD>_<FIELD>`, read as `it[SENDING_TO]`, and `<RECORD>_COUNT` its
-- number of fields. The same fields in the same order as the NamedTuples in
-- router/store/ledger.py (tests/test_record_fields.py compares them, through Redis): a
-- new field is added there and here, and read by its name. Local constants, not
-- tables: this runs at every call, and `it[SENDING_TO]` costs what `it[5]` does.

-- Sending: one message of a `sending` batch (sending.lua).
local SENDING_ID = 1
local SENDING_OWNER = 2
local SENDING_REPLAY = 3
local SENDING_SENDER = 4
local SENDING_TO = 5
local SENDING_TEXT = 6
local SENDING_META = 7
local SENDING_URL = 8
local SENDING_STICKY_KEY = 9
local SENDING_STICKY_TTL = 10
local SENDING_COUNT = 10

-- Finished: one outcome of a `finish` batch (finish.lua).
local FINISHED_ID = 1
local FINISHED_ENTRY = 2
local FINISHED_STEP = 3
local FINISHED_STATUS = 4
local FINISHED_NOTE = 5
local FINISHED_URL = 6
local FINISHED_TO = 7
local FINISHED_SENDER = 8
local FINISHED_META = 9
local FINISHED_SEGMENTS = 10
local FINISHED_ERROR_CODE = 11
local FINISHED_ERROR_RAW = 12
local FINISHED_ERROR = 13
local FINISHED_PART_IDS = 14
local FINISHED_FORMS = 15
local FINISHED_CONNECTOR = 16
local FINISHED_PRICE = 17
local FINISHED_COUNT = 17

-- Report: one part's delivery report (report.lua).
local REPORT_OUTCOME = 1
local REPORT_STAT = 2
local REPORT_ERR = 3
local REPORT_CANDIDATES = 4
local REPORT_JOB = 5
local REPORT_COUNT = 5

-- Enqueued: one job of an `enqueue` call (enqueue.lua).
local ENQUEUED_ID = 1
local ENQUEUED_JOB = 2
local ENQUEUED_FIELDS = 3
local ENQUEUED_COUNT = 3

-- SendingCall: sending.lua's ARGV[1].
local SENDING_CALL_NOW = 1
local SENDING_CALL_PROFILE = 2
local SENDING_CALL_RETENTION = 3
local SENDING_CALL_EVENTS_MAXLEN = 4
local SENDING_CALL_ITEMS = 5
local SENDING_CALL_COUNT = 5

-- FinishCall: finish.lua's ARGV[1].
local FINISH_CALL_NOW = 1
local FINISH_CALL_PROFILE = 2
local FINISH_CALL_RETENTION = 3
local FINISH_CALL_EVENTS_MAXLEN = 4
local FINISH_CALL_GROUP = 5
local FINISH_CALL_REPORT_DEADLINE = 6
local FINISH_CALL_SPEND_TTL = 7
local FINISH_CALL_ITEMS = 8
local FINISH_CALL_COUNT = 8

-- ReportCall: report.lua's ARGV[1].
local REPORT_CALL_NOW = 1
local REPORT_CALL_EVENTS_MAXLEN = 2
local REPORT_CALL_PROFILE = 3
local REPORT_CALL_KEEP_UNTIL = 4
local REPORT_CALL_REPORTS = 5
local REPORT_CALL_COUNT = 5

-- EnqueueCall: enqueue.lua's ARGV[1].
local ENQUEUE_CALL_NOW = 1
local ENQUEUE_CALL_RETENTION = 2
local ENQUEUE_CALL_EVENTS_MAXLEN = 3
local ENQUEUE_CALL_PROFILE = 4
local ENQUEUE_CALL_ITEMS = 5
local ENQUEUE_CALL_COUNT = 5

-- TransitionArgs: transition.lua's fixed ARGV (field pairs, then event pairs follow).
local TRANSITION_OWNER = 1
local TRANSITION_NOW = 2
local TRANSITION_STATUS = 3
local TRANSITION_RETENTION = 4
local TRANSITION_MODE = 5
local TRANSITION_NOTE = 6
local TRANSITION_EVENTS_MAXLEN = 7
local TRANSITION_FIELD_COUNT = 8
local TRANSITION_EVENT_COUNT = 9
local TRANSITION_GROUP = 10
local TRANSITION_ENTRY = 11
local TRANSITION_JOB = 12
local TRANSITION_REPORT_DEADLINE = 13
local TRANSITION_CONNECTOR = 14
local TRANSITION_COUNT = 14

-- MissingArgs: missing.lua's fixed ARGV (the job ids follow).
local MISSING_NOW = 1
local MISSING_EVENTS_MAXLEN = 2
local MISSING_PROFILE = 3
local MISSING_NOTE = 4
local MISSING_COUNT = 4

-- EarlyArgs: early.lua's ARGV.
local EARLY_NOW = 1
local EARLY_BATCH = 2
local EARLY_COUNT = 2

-- A delivery report as kept (JSON, in the early hash and a record's `dlr:<part>`);
-- Lua's own, no NamedTuple.
local DLR_OUTCOME = 1
local DLR_STAT = 2
local DLR_ERR = 3
local DLR_COUNT = 3

local function step(n, status, now, note)
  return 'h' .. n, status .. '|' .. now .. '|' .. note
end

-- Append a step and set the status (reads the history length: for the slow paths).
-- `connector` (optional; nil or '' = none) names the connector the step went over.
local function set_status(key, status, now, note, connector)
  local n = redis.call('HINCRBY', key, 'n', 1)
  local name, value = step(n, status, now, note)
  if connector and connector ~= '' then
    redis.call('HSET', key, 'status', status, 'updated_at', now, name, value,
               'c' .. n, connector, 'connector', connector)
  else
    redis.call('HSET', key, 'status', status, 'updated_at', now, name, value)
  end
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
      if r[DLR_OUTCOME] ~= 'delivered' and final == 'delivered' then
        final, fstat, ferr = r[DLR_OUTCOME], r[DLR_STAT], r[DLR_ERR]
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
