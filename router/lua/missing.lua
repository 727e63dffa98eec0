-- Sent messages whose delivery report is overdue (the SMSC lost it, or its inbound
-- queue overflowed): each gets a last note on its `sent` status and an event, so no
-- message stays `sent` without anyone knowing; a report that still comes later applies.
-- KEYS: awaiting-reports set, event stream, stats hash. ARGV: now, batch size, record
-- key prefix, events maxlen, callbacks stream, profile, note.
-- Returns {members taken, records noted}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local noted = 0
for _, job in ipairs(due) do
  redis.call('ZREM', KEYS[1], job)
  local rec = ARGV[3] .. job
  if redis.call('HGET', rec, 'status') == 'sent' then
    set_status(rec, 'sent', ARGV[1], ARGV[7])
    redis.call('HSET', rec, 'report_timeout', '1')
    local ev = {'id', job, 'profile', ARGV[6], 'status', 'sent', 'at', ARGV[1],
                'note', ARGV[7], 'report_timeout', '1'}
    for _, name in ipairs({'to', 'from', 'provider_message_id', 'meta'}) do
      local value = redis.call('HGET', rec, name)
      if value then ev[#ev + 1] = name; ev[#ev + 1] = value end
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ev))
    to_callbacks(rec, ARGV[5], ev)
    noted = noted + 1
  end
end
if noted > 0 then redis.call('HINCRBY', KEYS[3], 'reports_missing', noted) end
return {#due, noted}
