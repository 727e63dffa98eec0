-- The hot path's second write: the outcomes of a batch (`sent` or `failed`), their
-- events, the provider-id index, and the acknowledgement of their work entries, in one
-- call. Each record gets one HSET: the worker carries the history index from
-- sending.lua (nothing else writes a record while it is `sending`). Delivery reports
-- that came before `sent` (kept by report.lua) are applied here, in the same step.
-- KEYS: event stream, callbacks stream, work stream, awaiting-reports set, early hash,
-- early zset, then each item's record, then the provider-id index key of every part of
-- every `sent` item, in item order.
-- ARGV[1]: msgpack {now, profile, retention, events maxlen, ack group, report deadline
-- ('' = none), items}; each item {job id, entry id, history
-- index, status, note, status_callback_url, to, from, meta, segments, error code, error
-- raw, error, {provider ids of the parts}, {part id, id form, ...}: the forms an early
-- report may be kept under}. Returns the final statuses early reports wrote, as a flat
-- list {status, count, ...}.
local args = cmsgpack.unpack(ARGV[1])
local now, profile, ttl, maxlen = args[1], args[2], args[3], args[4]
local group, deadline = args[5], args[6]
local items = args[7]
local index = 6 + #items  -- KEYS index of the last provider-id index key taken
local entries = {}
for i, it in ipairs(items) do
  local job, status, note, ids = it[1], it[4], it[5], it[14]
  entries[#entries + 1] = it[2]
  local rec = KEYS[6 + i]
  local name, value = step(it[3], status, now, note)
  local f = {'status', status, 'updated_at', now, 'n', it[3], name, value}
  local ev = {'id', job, 'profile', profile, 'status', status, 'at', now}
  if note ~= '' then ev[#ev + 1] = 'note'; ev[#ev + 1] = note end
  if it[7] ~= '' then ev[#ev + 1] = 'to'; ev[#ev + 1] = it[7] end
  if it[8] ~= '' then ev[#ev + 1] = 'from'; ev[#ev + 1] = it[8] end
  if it[9] ~= '' then ev[#ev + 1] = 'meta'; ev[#ev + 1] = it[9] end
  if status == 'sent' then
    local pmid = ids[1] or ''
    f[#f + 1] = 'provider_message_id'; f[#f + 1] = pmid
    f[#f + 1] = 'segments'; f[#f + 1] = it[10]
    if #ids > 1 then f[#f + 1] = 'part_ids'; f[#f + 1] = cjson.encode(ids) end
    ev[#ev + 1] = 'provider_message_id'; ev[#ev + 1] = pmid
    for _ = 1, #ids do
      index = index + 1
      redis.call('SET', KEYS[index], job, 'EX', ttl)
    end
    if deadline ~= '' then redis.call('ZADD', KEYS[4], deadline, job) end
  elseif it[11] ~= '' then
    f[#f + 1] = 'error_code'; f[#f + 1] = it[11]
    f[#f + 1] = 'error_raw'; f[#f + 1] = it[12]
    f[#f + 1] = 'error'; f[#f + 1] = it[13]
    ev[#ev + 1] = 'error_code'; ev[#ev + 1] = it[11]
  end
  redis.call('HSET', rec, unpack(f))
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ev))
  post(KEYS[2], it[6], ev)
end
-- Early reports: one look per batch while none is kept (the usual case without them).
local finals = {}
if redis.call('EXISTS', KEYS[5]) == 1 then
  local wanted, owners = {}, {}
  for i, it in ipairs(items) do
    local forms = it[15]
    for k = 1, #forms, 2 do
      wanted[#wanted + 1] = forms[k + 1]
      owners[#owners + 1] = {i, forms[k]}
    end
  end
  if #wanted > 0 then
    local found = redis.call('HMGET', KEYS[5], unpack(wanted))
    local done, applied_to = {}, {}
    for w = 1, #wanted do
      local raw = found[w]
      local i, part = owners[w][1], owners[w][2]
      if raw and not done[part] then
        done[part] = true
        local it = items[i]
        local r = cjson.decode(raw)
        local ids = it[14]
        if #ids == 0 then ids = {part} end
        local n = nil
        if not applied_to[i] then n = it[3] end  -- a second part's report: read n
        applied_to[i] = true
        local awaiting = ''
        if deadline ~= '' then awaiting = KEYS[4] end
        local final = apply_report(KEYS[6 + i], it[1], part, r[1], r[2], r[3], now, ids,
                                   {it[7], it[8], it[9], it[6]}, profile, KEYS[1], maxlen,
                                   KEYS[2], awaiting, n)
        if final then finals[final] = (finals[final] or 0) + 1 end
      end
      if raw then
        redis.call('HDEL', KEYS[5], wanted[w])
        redis.call('ZREM', KEYS[6], wanted[w])
      end
    end
  end
end
if #entries > 0 then
  redis.call('XACK', KEYS[3], group, unpack(entries))
  redis.call('XDEL', KEYS[3], unpack(entries))
end
local out = {}
for status, count in pairs(finals) do
  out[#out + 1] = status
  out[#out + 1] = count
end
return out
