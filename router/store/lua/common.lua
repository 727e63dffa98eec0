-- Shared by every record script (prepended to each).
--
-- Record shape (compact: every byte of it is kept for the retention, per message): a
-- hash with `status`, `owner`, `created_at`, `n` (history length) and one field per
-- history step named by its index alone (`1`, `2`...: Redis keeps such a name as a
-- one-byte integer), its value `<code><time>[|<connector>[|<note>]]`: the status as one
-- letter (`status_code`), the time in microseconds after `created_at` in base 36, then
-- the connector the step went over and its note when it has them. A change appends one
-- field instead of decoding and re-encoding the whole history. Nothing derivable is
-- stored: the time of the latest change, the latest connector, the attempts (the
-- `sending` steps), the profile (in the key) and a delivery report's stat and err (in
-- its step's note) are read from the rest (router/store/ledger.py's decode_record,
-- which also reads the older shape: `h<i>` = "status|time|note", `c<i>`,
-- `updated_at`...). Values longer than 64 bytes are kept in pieces (`put_long`) so the
-- hash stays a listpack.

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
local SENDING_MEDIA = 11
local SENDING_MMS = 12
local SENDING_NOTE = 13
local SENDING_COUNT = 13

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
local SENDING_CALL_INDEX_STAMP = 5
local SENDING_CALL_ITEMS = 6
local SENDING_CALL_COUNT = 6

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
local REPORT_CALL_EARLY_EXPIRES = 4
local REPORT_CALL_REPORTS = 5
local REPORT_CALL_COUNT = 5

-- EnqueueCall: enqueue.lua's ARGV[1].
local ENQUEUE_CALL_NOW = 1
local ENQUEUE_CALL_RETENTION = 2
local ENQUEUE_CALL_EVENTS_MAXLEN = 3
local ENQUEUE_CALL_PROFILE = 4
local ENQUEUE_CALL_INDEX_STAMP = 5
local ENQUEUE_CALL_ITEMS = 6
local ENQUEUE_CALL_COUNT = 6

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

-- A delivery report as kept (JSON, in an early-report hash and a record's `dlr:<part>`);
-- Lua's own, no NamedTuple.
local DLR_OUTCOME = 1
local DLR_STAT = 2
local DLR_ERR = 3
local DLR_COUNT = 3

-- One letter per status in a history step (ledger.py's STEP_CODES reads them back).
local status_code = {queued = 'q', scheduled = 'c', sending = 'g', sent = 's',
                     delivered = 'd', undelivered = 'u', failed = 'f', rejected = 'r',
                     expired = 'x'}
local digits36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local micros_seen = {}  -- time text -> microseconds: a call's `now` is read once

-- A time as written ("<seconds>.<microseconds>") in microseconds, rounded: exact for
-- six decimals (the double's error is under a quarter of a microsecond up to 2100), and
-- the same operations as ledger.py's `_micros`, so both sides agree to the microsecond.
local function micros(t)
  local v = micros_seen[t]
  if v then return v end
  v = tonumber(t)
  if not v then error('not a time: ' .. tostring(t)) end
  v = math.floor(v * 1000000 + 0.5)
  micros_seen[t] = v
  return v
end

-- An integer in base 36 (with a leading '-' when negative).
local function base36(x)
  local sign = ''
  if x < 0 then sign, x = '-', -x end
  local out = ''
  repeat
    local d = x % 36
    out = string.sub(digits36, d + 1, d + 1) .. out
    x = (x - d) / 36
  until x == 0
  return sign .. out
end

-- History step `n` as a field name and value. Its time is written as microseconds
-- after `base`, the record's `created_at` (a few characters: `0` for the first step;
-- negative when another host's clock is behind); a record without one (nil) gets
-- microseconds since 1970. `connector` ('' or nil = none) is the one the step went over.
local function step(n, status, now, note, connector, base)
  local code = status_code[status]
  if not code then error('unknown status: ' .. tostring(status)) end
  local at = micros(now)
  if base then at = at - micros(base) end
  local value = code .. base36(at)
  connector = connector or ''
  if note ~= '' then
    value = value .. '|' .. connector .. '|' .. note
  elseif connector ~= '' then
    value = value .. '|' .. connector
  end
  return n, value
end

-- Append a step and set the status (reads the history length and the record's
-- `created_at`: for the slow paths). `connector` (optional; nil or '' = none) names
-- the connector the step went over.
local function set_status(key, status, now, note, connector)
  local n = redis.call('HINCRBY', key, 'n', 1)
  local base = redis.call('HGET', key, 'created_at') or nil
  local name, value = step(n, status, now, note, connector, base)
  redis.call('HSET', key, 'status', status, name, value)
end

-- The connector of the latest step of record `rec` that names one, looking back from
-- step `n` (a few steps: a `sent` record's is its `sent` step, or the one before a
-- missing-report note); a record of the older shape has it as `connector`.
local function latest_connector(rec, n)
  for k = n, math.max(1, n - 3), -1 do
    local v = redis.call('HGET', rec, k)
    if not v then break end
    local via = string.match(v, '^[^|]*|([^|]*)')
    if via and via ~= '' then return via end
  end
  return redis.call('HGET', rec, 'connector') or ''
end

-- A long value (a message's text, a callback URL, an error) in pieces of at most 64
-- bytes: Redis keeps a hash as a compact listpack only while every value fits
-- `hash-max-listpack-value` (64 by default), and one 70-character SMS would otherwise
-- turn the whole record into a hash table (about twice the bytes). `<name>` holds the
-- first piece (a reader of `text` alone gets the start of the message), then
-- `<name>~2`, `<name>~3`...; each cut falls between UTF-8 characters, so every piece
-- reads as text on its own. Appends the field names and pieces to `f`. (`meta` is
-- kept whole: the SMPP server's receipts read it as JSON.)
local piece_max = 64
local function put_long(f, name, value)
  local at, len, i = 1, #value, 1
  while true do
    local cut = at + piece_max - 1
    if cut >= len then
      cut = len
    else
      local b = string.byte(value, cut + 1)
      while cut > at and b >= 128 and b < 192 do  -- the next byte continues a character
        cut = cut - 1
        b = string.byte(value, cut + 1)
      end
    end
    if i == 1 then f[#f + 1] = name else f[#f + 1] = name .. '~' .. i end
    f[#f + 1] = string.sub(value, at, cut)
    if cut >= len then return i end
    at, i = cut + 1, i + 1
  end
end

-- A value written again over one of more pieces (a text shortened, a later attempt's
-- shorter error) would leave the old value's last pieces behind, and readers join
-- every piece: drop those beyond the `count` just written. `old_first` is the old
-- first piece as read (false or nil when absent); only a full one can have had more.
local function drop_pieces(rec, name, count, old_first)
  if not old_first or #old_first < piece_max - 3 then return end
  local i = count + 1
  while redis.call('HDEL', rec, name .. '~' .. i) == 1 do i = i + 1 end
end

-- The whole of a value `put_long` wrote, given its first piece as read (false or nil
-- when absent): a first piece shorter than the largest is the whole value.
local function long_value(rec, name, first)
  if not first or #first < piece_max - 3 then return first end
  local out, i = {first}, 2
  while true do
    local more = redis.call('HGET', rec, name .. '~' .. i)
    if not more then return table.concat(out) end
    out[#out + 1] = more
    i = i + 1
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
  local url = redis.call('HGET', key, 'status_callback_url')
  post(stream, long_value(key, 'status_callback_url', url), ev)
end

-- One part's delivery report on a `sent` record. `parts` lists every part's id (one
-- for a short message). Returns the final status once every part has reported (the
-- record, its event and callback written), else nil; the caller takes a final message
-- out of the awaiting set. `n` is the record's history length before the report (the
-- caller read it or just wrote it), `base` its `created_at` (nil: none).
-- info: {to =, from =, meta =, url =} of the message ('' where absent).
-- The report's stat and err go in its step's note only (decode_record reads them from
-- there); a part's own report is kept (`dlr:<part>`) only while a long message waits
-- for its other parts' reports.
local function apply_report(rec, job, part, outcome, stat, err, now, parts, info,
                            profile, events, maxlen, callbacks, n, base)
  local final, fstat, ferr = outcome, stat, err
  if #parts > 1 then
    redis.call('HSET', rec, 'dlr:' .. part, cjson.encode({outcome, stat, err}))  -- a DLR
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
  n = n + 1
  local name, value = step(n, final, now, 'stat ' .. fstat .. ' err ' .. ferr, '', base)
  local f = {'status', final, 'n', n, name, value}
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

-- The recipient index (keys.py's `recipient_index`): a call's members
-- (`<to>|<stamp>|<id>`, score 0) into its day's set, a ZADD per 1000, and the set
-- kept until the retention after the day's end (its last record's).
local function index_recipients(index, members, now, ttl)
  if #members == 0 then return end
  for first = 1, #members, 1000 do
    redis.call('ZADD', index, unpack(members, first, math.min(#members, first + 999)))
  end
  local day_end = (math.floor(tonumber(now) / 86400) + 1) * 86400
  redis.call('EXPIREAT', index, string.format('%d', day_end + ttl))
end
