-- A delivery report for one part of a sent message, found through the provider-id index
-- in the same step. The record's final status comes when every part has reported:
-- delivered if all were, else undelivered with the first failing part's stat and err.
-- A report whose message is not recorded `sent` yet (the SMSC sent it before its
-- submit_sm_resp, or the worker has not flushed the outcome) is kept in the profile's
-- early-report hash, with its own deadline in the early zset; finish.lua applies it
-- in the step that records `sent`. Both steps are scripts, so one sees the other.
-- KEYS: event stream, awaiting-reports set, early hash, early zset, then the candidate
-- provider-id index keys, best first (the first that exists names the job).
-- ARGV: part outcome (delivered | undelivered), stat, err, now, events maxlen, record
-- key prefix, callbacks stream, profile, early deadline, candidate count, the candidate
-- ids (same order as their keys).
-- Returns {verdict, status, job id, matched id}; verdict: ok (final status written) |
-- partial (waiting for other parts) | early (kept) | done (message final already).
local ncand = tonumber(ARGV[10])
local job, part
for i = 1, ncand do
  job = redis.call('GET', KEYS[4 + i])
  if job then part = ARGV[10 + i]; break end
end
local st = nil
if job then st = redis.call('HGET', ARGV[6] .. job, 'status') end
if not st or st == 'queued' or st == 'scheduled' or st == 'sending' then
  redis.call('HSET', KEYS[3], ARGV[11], cjson.encode({ARGV[1], ARGV[2], ARGV[3]}))
  redis.call('ZADD', KEYS[4], ARGV[9], ARGV[11])
  return {'early', st or '', job or '', ARGV[11]}
end
if st ~= 'sent' then return {'done', st, job, part} end
local rec = ARGV[6] .. job
local info = redis.call('HMGET', rec, 'part_ids', 'to', 'from', 'meta', 'status_callback_url')
local parts = {part}
if info[1] then parts = cjson.decode(info[1]) end
local final = apply_report(rec, job, part, ARGV[1], ARGV[2], ARGV[3], ARGV[4], parts,
                           {info[2] or '', info[3] or '', info[4] or '', info[5] or ''},
                           ARGV[8], KEYS[1], ARGV[5], ARGV[7], KEYS[2])
if not final then return {'partial', st, job, part} end
return {'ok', final, job, part}
