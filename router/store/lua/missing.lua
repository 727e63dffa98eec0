-- Sent messages whose delivery report is overdue (the SMSC lost it, or its inbound
-- queue overflowed): each gets a last note on its `sent` status and an event, so no
-- message stays `sent` without anyone knowing; a report that still comes later applies.
-- The caller read the due members first (their records' keys go in KEYS); a member
-- another instance took in between is left alone (ZREM says so).
-- KEYS: awaiting-reports set, event stream, stats hash, callbacks stream, then the
-- records of the due jobs. ARGV: MISSING {now, events maxlen, profile, note}
-- (common.lua), then the job ids. Returns how many records got the note.
local now, maxlen = ARGV[MISSING_NOW], ARGV[MISSING_EVENTS_MAXLEN]
local profile, note = ARGV[MISSING_PROFILE], ARGV[MISSING_NOTE]
local first = MISSING_COUNT  -- ARGV index before the first job id
local noted = 0
for n = 1, #ARGV - first do
  local job = ARGV[first + n]
  local rec = KEYS[4 + n]
  if redis.call('ZREM', KEYS[1], job) == 1 and redis.call('HGET', rec, 'status') == 'sent' then
    set_status(rec, 'sent', now, note)
    redis.call('HSET', rec, 'report_timeout', '1')
    local ev = {'id', job, 'profile', profile, 'status', 'sent', 'at', now,
                'note', note, 'report_timeout', '1'}
    -- (`pmid`: a record of the older shape has `provider_message_id`)
    local got = redis.call('HMGET', rec, 'to', 'from', 'pmid', 'provider_message_id', 'meta')
    local names = {'to', 'from', 'provider_message_id', 'provider_message_id', 'meta'}
    local seen = {}
    for i, name in ipairs(names) do
      if got[i] and not seen[name] then
        seen[name] = true
        ev[#ev + 1] = name; ev[#ev + 1] = got[i]
      end
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(ev))
    to_callbacks(rec, KEYS[4], ev)
    noted = noted + 1
  end
end
if noted > 0 then redis.call('HINCRBY', KEYS[3], 'reports_missing', noted) end
return noted
