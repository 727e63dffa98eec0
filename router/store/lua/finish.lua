-- The hot path's second write: the outcomes of a batch (`sent` or `failed`), their
-- events, the provider-id index, and the acknowledgement of their work entries, in one
-- call. Each record gets one HSET: the worker carries the history index from
-- sending.lua (nothing else writes a record while it is `sending`). Delivery reports
-- that came before `sent` (kept by report.lua) are applied here, in the same step.
-- KEYS: event stream, callbacks stream, work stream, awaiting-reports set, the early
-- hash and zset of the older layout (reports kept before an upgrade), the early-report
-- hashes of the current and the previous time bucket (report.lua), and of the next
-- (written by an instance whose clock is a little ahead), then each item's
-- record, then the provider-id index key of every part of every `sent` item, in item
-- order, then the day's spend hash.
-- ARGV[1]: msgpack FINISH_CALL {now, profile, retention (of the provider-id index; 0:
-- none written, and no index key passed), events maxlen, ack group,
-- report deadline ('' = none), spend ttl, items}; each item a FINISHED (common.lua:
-- names and meanings in router/store/ledger.py). An item's connector ('' = none) goes
-- in its step and its event (`connector`); a `sent` item's price (0 = unknown) on the
-- record (`price`) and in the day's spend (`total` and its connector's field, in
-- millionths: one HINCRBY per field per call). Early reports are applied before the
-- index and the awaiting set are written: a part whose report is applied needs no
-- index entry, and a message they made final does not wait for a report. Returns
-- {item index, final status, ...} for the items an early report made final.
local args = cmsgpack.unpack(ARGV[1])
local now, profile = args[FINISH_CALL_NOW], args[FINISH_CALL_PROFILE]
local ttl, maxlen = args[FINISH_CALL_RETENTION], args[FINISH_CALL_EVENTS_MAXLEN]
local group, deadline = args[FINISH_CALL_GROUP], args[FINISH_CALL_REPORT_DEADLINE]
local items = args[FINISH_CALL_ITEMS]
local first = 9  -- KEYS index before the first record
local index = first + #items  -- KEYS index of the last provider-id index key taken
local entries = {}
local spent, by_connector = 0, {}
local indexed = {}  -- item -> {{KEYS index, part id}, ...}: its parts' index keys
local bases = {}  -- item -> its record's created_at (the steps' times are after it)
for i, it in ipairs(items) do
  local job, status, note, ids = it[FINISHED_ID], it[FINISHED_STATUS], it[FINISHED_NOTE],
                                 it[FINISHED_PART_IDS]
  local n, to, from, meta = it[FINISHED_STEP], it[FINISHED_TO], it[FINISHED_SENDER],
                            it[FINISHED_META]
  local code, via = it[FINISHED_ERROR_CODE], it[FINISHED_CONNECTOR]
  entries[#entries + 1] = it[FINISHED_ENTRY]
  local rec = KEYS[first + i]
  local base = redis.call('HGET', rec, 'created_at') or nil
  bases[i] = base
  local name, value = step(n, status, now, note, via, base)
  local f = {'status', status, 'n', n, name, value}
  local drops = {}  -- long values written again: {name, pieces written}
  local ev = {'id', job, 'profile', profile, 'status', status, 'at', now}
  if via ~= '' then ev[#ev + 1] = 'connector'; ev[#ev + 1] = via end
  if note ~= '' then ev[#ev + 1] = 'note'; ev[#ev + 1] = note end
  if to ~= '' then ev[#ev + 1] = 'to'; ev[#ev + 1] = to end
  if from ~= '' then ev[#ev + 1] = 'from'; ev[#ev + 1] = from end
  if meta ~= '' then ev[#ev + 1] = 'meta'; ev[#ev + 1] = meta end
  if status == 'sent' then
    -- Spend is counted in integer millionths (HINCRBY: no float drift over a day).
    local micros = math.floor(it[FINISHED_PRICE] * 1000000 + 0.5)
    if micros > 0 then
      -- As written in the price list (0.05, not Lua's 0.050000000000000003).
      f[#f + 1] = 'price'; f[#f + 1] = string.format('%.10g', micros / 1000000)
      spent = spent + micros
      if via ~= '' then by_connector[via] = (by_connector[via] or 0) + micros end
    end
    local pmid = ids[1] or ''
    f[#f + 1] = 'pmid'; f[#f + 1] = pmid
    -- (one segment, the usual, is not written: decode_record reads no `segments` as 1)
    local segments = it[FINISHED_SEGMENTS]
    if segments ~= 1 then f[#f + 1] = 'segments'; f[#f + 1] = segments end
    if #ids > 1 then
      -- (a message sent again after a crash: its earlier parts' ids may be longer)
      drops[#drops + 1] = {'part_ids', put_long(f, 'part_ids', cjson.encode(ids))}
    end
    ev[#ev + 1] = 'provider_message_id'; ev[#ev + 1] = pmid
    if ttl > 0 then  -- (0: the profile keeps no index; none of its keys are passed)
      local mine = {}
      for _, id in ipairs(ids) do
        index = index + 1
        mine[#mine + 1] = {index, id}
      end
      indexed[i] = mine
    end
  elseif code ~= '' then
    f[#f + 1] = 'error_code'; f[#f + 1] = code
    drops[#drops + 1] = {'error_raw', put_long(f, 'error_raw', it[FINISHED_ERROR_RAW])}
    drops[#drops + 1] = {'error', put_long(f, 'error', it[FINISHED_ERROR])}
    ev[#ev + 1] = 'error_code'; ev[#ev + 1] = code
  end
  for _, d in ipairs(drops) do d[3] = redis.call('HGET', rec, d[1]) end
  redis.call('HSET', rec, unpack(f))
  for _, d in ipairs(drops) do drop_pieces(rec, d[1], d[2], d[3]) end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ev))
  post(KEYS[2], it[FINISHED_URL], ev)
end
-- Early reports: one look per batch while none is kept (the usual case without them).
-- Newest bucket first; the older layout's hash last.
local finals, applied = {}, {}  -- item -> final status; part id -> true
local early = {}
for _, key in ipairs({KEYS[7], KEYS[8], KEYS[9], KEYS[5]}) do
  if redis.call('EXISTS', key) == 1 then early[#early + 1] = key end
end
if #early > 0 then
  local wanted, owners = {}, {}
  for i, it in ipairs(items) do
    local forms = it[FINISHED_FORMS]
    for k = 1, #forms, 2 do
      wanted[#wanted + 1] = forms[k + 1]
      owners[#owners + 1] = {i, forms[k]}
    end
  end
  for _, key in ipairs(early) do
    if #wanted == 0 then break end
    local found = redis.call('HMGET', key, unpack(wanted))
    local gone = {}  -- the early entries taken
    for w = 1, #wanted do
      local raw = found[w]
      local i, part = owners[w][1], owners[w][2]
      if raw and not applied[part] and not finals[i] then
        applied[part] = true
        local it = items[i]
        local r = cjson.decode(raw)
        local ids = it[FINISHED_PART_IDS]
        if #ids == 0 then ids = {part} end
        local info = {to = it[FINISHED_TO], from = it[FINISHED_SENDER],
                      meta = it[FINISHED_META], url = it[FINISHED_URL]}
        -- (its step is the item's, until a report makes it final; it is not in the
        -- awaiting set yet)
        local final = apply_report(KEYS[first + i], it[FINISHED_ID], part, r[DLR_OUTCOME],
                                   r[DLR_STAT], r[DLR_ERR], now, ids, info, profile,
                                   KEYS[1], maxlen, KEYS[2], it[FINISHED_STEP], bases[i])
        if final then finals[i] = final end
      end
      if raw then gone[#gone + 1] = wanted[w] end
    end
    if #gone > 0 then
      redis.call('HDEL', key, unpack(gone))
      if key == KEYS[5] then redis.call('ZREM', KEYS[6], unpack(gone)) end
    end
  end
end
-- The provider-id index of the parts whose report is still to come, and the awaiting
-- set (one ZADD) for the messages not final yet.
local awaited = {}
for i, it in ipairs(items) do
  for _, at in ipairs(indexed[i] or {}) do
    if not applied[at[2]] then redis.call('SET', KEYS[at[1]], it[FINISHED_ID], 'EX', ttl) end
  end
  if deadline ~= '' and it[FINISHED_STATUS] == 'sent' and not finals[i] then
    awaited[#awaited + 1] = deadline
    awaited[#awaited + 1] = it[FINISHED_ID]
  end
end
if #awaited > 0 then redis.call('ZADD', KEYS[4], unpack(awaited)) end
if spent > 0 then
  redis.call('HINCRBY', KEYS[#KEYS], 'total', spent)
  for via, micros in pairs(by_connector) do redis.call('HINCRBY', KEYS[#KEYS], via, micros) end
  redis.call('EXPIRE', KEYS[#KEYS], args[FINISH_CALL_SPEND_TTL])
end
if #entries > 0 then
  redis.call('XACK', KEYS[3], group, unpack(entries))
  redis.call('XDEL', KEYS[3], unpack(entries))
end
-- Only the items an early report made final: most calls answer an empty list.
local out = {}
for i, final in pairs(finals) do
  out[#out + 1] = i
  out[#out + 1] = final
end
return out
