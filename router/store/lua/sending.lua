-- The hot path's first write: record `sending` for a batch of messages in one call.
-- For each message the record's owner decides: a record owned by another entry is a
-- duplicate job id, a final one is not sent again; otherwise the step is one HMGET,
-- one HSET and the event. (The attempts are the record's `sending` steps.)
-- KEYS: event stream, callbacks stream, stats hash, then each item's record, then (only
-- when `index_stamp` is not '') the recipient index of the call's UTC day (keys.py's
-- `recipient_index`: written only for a record created here, a plain XADD job's; a
-- door's job was indexed by enqueue.lua), then the sticky keys of the items that have
-- one, in item order.
-- ARGV[1]: msgpack SENDING_CALL {now, profile, retention, events maxlen, index stamp,
-- items}; each item a SENDING (common.lua: names and meanings in
-- router/store/ledger.py); a sticky key is set to `sender` (the recipient's number from now on, `sticky` strategies), in
-- the same step. Returns a flat array: verdict, previous status, history index of the
-- step (0 unless ok) for each item; verdict: ok | duplicate | done.
local args = cmsgpack.unpack(ARGV[1])
local now, profile = args[SENDING_CALL_NOW], args[SENDING_CALL_PROFILE]
local ttl, maxlen = args[SENDING_CALL_RETENTION], args[SENDING_CALL_EVENTS_MAXLEN]
local items = args[SENDING_CALL_ITEMS]
local stamp = args[SENDING_CALL_INDEX_STAMP]
local sticky = 3 + #items  -- KEYS index of the last sticky key taken
if stamp ~= '' then sticky = sticky + 1 end
local out = {}
local indexed = {}  -- the recipient index's new members (one ZADD per 500, at the end)
for i, it in ipairs(items) do
  local job, owner, replay = it[SENDING_ID], it[SENDING_OWNER], it[SENDING_REPLAY]
  local from, to, text = it[SENDING_SENDER], it[SENDING_TO], it[SENDING_TEXT]
  local meta, url, sticky_key = it[SENDING_META], it[SENDING_URL], it[SENDING_STICKY_KEY]
  local rec = KEYS[3 + i]
  if sticky_key ~= '' then sticky = sticky + 1 end
  local cur = redis.call('HMGET', rec, 'status', 'owner', 'n', 'created_at', 'text',
                         'status_callback_url')
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
    local media, mms = it[SENDING_MEDIA], it[SENDING_MMS]
    local name, value = step(n, 'sending', now, it[SENDING_NOTE], '', cur[4] or now)
    local f = {'status', 'sending', 'owner', owner, 'n', n, name, value, 'from', from,
               'to', to}
    -- (the text may have changed since `queued`: shortened links, a template)
    local text_pieces, url_pieces = 0, 0
    if text ~= '' then text_pieces = put_long(f, 'text', text) end
    if meta ~= '' then f[#f + 1] = 'meta'; f[#f + 1] = meta end
    -- an MMS: its media (the door wrote them at `queued`; a plain XADD did not) and
    -- whether they go as media or as links in the text
    if mms ~= '' then put_long(f, 'media', media); f[#f + 1] = 'mms'; f[#f + 1] = mms end
    if url ~= '' then url_pieces = put_long(f, 'status_callback_url', url) end
    if not st then f[#f + 1] = 'created_at'; f[#f + 1] = now end
    redis.call('HSET', rec, unpack(f))
    if text_pieces > 0 then drop_pieces(rec, 'text', text_pieces, cur[5]) end
    if url_pieces > 0 then drop_pieces(rec, 'status_callback_url', url_pieces, cur[6]) end
    if sticky_key ~= '' then
      redis.call('SET', KEYS[sticky], from, 'EX', it[SENDING_STICKY_TTL])
    end
    if not st then
      redis.call('EXPIRE', rec, ttl)
      -- The recipient index, as enqueue.lua writes it for a door's job (see there).
      if stamp ~= '' and to ~= '' then
        indexed[#indexed + 1] = 0
        indexed[#indexed + 1] = to .. '|' .. stamp .. '|' .. job
      end
    end
    if st == 'sending' then
      -- The last attempt never got an outcome recorded: it may have reached the
      -- provider before a crash. Sending again is the at-least-once price; count it.
      redis.call('HINCRBY', KEYS[3], 'possible_duplicates', 1)
    end
    local ev = {'id', job, 'profile', profile, 'status', 'sending', 'at', now,
                'to', to, 'from', from}
    if meta ~= '' then ev[#ev + 1] = 'meta'; ev[#ev + 1] = meta end
    if mms ~= '' then
      ev[#ev + 1] = 'media'; ev[#ev + 1] = media; ev[#ev + 1] = 'mms'; ev[#ev + 1] = mms
    end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(ev))
    post(KEYS[2], url, ev)
    out[#out + 1] = 'ok'; out[#out + 1] = st or ''; out[#out + 1] = n
  end
end
if #indexed > 0 then index_recipients(KEYS[4 + #items], indexed, now, ttl) end
return out
