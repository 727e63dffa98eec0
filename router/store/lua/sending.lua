-- The hot path's first write: record `sending` for a batch of messages in one call.
-- For each message the record's owner decides: a record owned by another entry is a
-- duplicate job id, a final one is not sent again; otherwise the step is one HMGET,
-- one HSET and the event.
-- KEYS: event stream, callbacks stream, stats hash, then each item's record, then the
-- sticky keys of the items that have one, in item order.
-- ARGV[1]: msgpack {now, profile, retention, events maxlen, items}; each item {job id,
-- owner, replay ('1' | ''), from, to, text, meta, status_callback_url, sticky key, sticky
-- ttl} ('' where absent): a sticky key is set to `from` (the recipient's number from now
-- on, `sticky` strategies), in the same step. Returns a flat array: verdict, previous
-- status, history index of the step (0 unless ok) for each item; verdict: ok |
-- duplicate | done.
local args = cmsgpack.unpack(ARGV[1])
local now, profile, ttl, maxlen = args[1], args[2], args[3], args[4]
local items = args[5]
local sticky = 3 + #items  -- KEYS index of the last sticky key taken
local out = {}
for i, it in ipairs(items) do
  local job, owner, replay = it[1], it[2], it[3]
  local rec = KEYS[3 + i]
  if it[9] ~= '' then sticky = sticky + 1 end
  local cur = redis.call('HMGET', rec, 'status', 'owner', 'n', 'attempts')
  local st, own = cur[1], cur[2]
  local verdict = 'ok'
  if st then
    if own and own ~= owner then
      verdict = 'duplicate'
    elseif st == 'sent' or st == 'delivered' or st == 'undelivered' or st == 'failed'
        or st == 'expired' or (st == 'rejected' and replay ~= '1') then
      verdict = 'done'
    end
  end
  if verdict ~= 'ok' then
    out[#out + 1] = verdict; out[#out + 1] = st; out[#out + 1] = 0
  else
    local n = tonumber(cur[3] or '0') + 1
    local name, value = step(n, 'sending', now, '')
    local f = {'status', 'sending', 'updated_at', now, 'owner', owner, 'n', n, name, value,
               'attempts', tonumber(cur[4] or '0') + 1, 'from', it[4], 'to', it[5],
               'profile', profile}
    if it[6] ~= '' then f[#f + 1] = 'text'; f[#f + 1] = it[6] end
    if it[7] ~= '' then f[#f + 1] = 'meta'; f[#f + 1] = it[7] end
    if it[8] ~= '' then f[#f + 1] = 'status_callback_url'; f[#f + 1] = it[8] end
    if not st then f[#f + 1] = 'created_at'; f[#f + 1] = now end
    redis.call('HSET', rec, unpack(f))
    if it[9] ~= '' then redis.call('SET', KEYS[sticky], it[4], 'EX', it[10]) end
    if not st then redis.call('EXPIRE', rec, ttl) end
    if st == 'sending' then
      -- The last attempt never got an outcome recorded: it may have reached the
      -- provider before a crash. Sending again is the at-least-once price; count it.
      redis.call('HINCRBY', KEYS[3], 'possible_duplicates', 1)
    end
    local ev = {'id', job, 'profile', profile, 'status', 'sending', 'at', now,
                'to', it[5], 'from', it[4]}
    if it[7] ~= '' then ev[#ev + 1] = 'meta'; ev[#ev + 1] = it[7] end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ev))
    post(KEYS[2], it[8], ev)
    out[#out + 1] = 'ok'; out[#out + 1] = st or ''; out[#out + 1] = n
  end
end
return out
