-- Delivery reports, a batch in one call. Each report is for one part of a message, found
-- through the provider-id index in the same step. The record's final status comes when
-- every part has reported: delivered if all were, else undelivered with the first
-- failing part's stat and err. A report whose message is not recorded `sent` yet (the
-- SMSC sent it before its submit_sm_resp, or the worker has not flushed the outcome) is
-- kept early: in the profile's early-report hash of the current time bucket, which
-- expires as a whole (at `early_expires`: no deadline of its own per report, so no
-- sorted set to keep); finish.lua applies it in the step that records `sent`. Both
-- steps are scripts, so one sees the other. Once a part's report is applied its
-- provider-id index entry is deleted: a delivered message keeps only its record (a
-- repeat of the report finds no message and is kept early until its bucket expires).
-- The caller read the index first (the record's key comes from it, and every key a
-- script touches is passed in KEYS); the index is read again here: a report whose
-- message the index names differently now (its `sent` was recorded in between) is
-- answered `retry`, and the caller runs it again.
-- KEYS: event stream, awaiting-reports set, early-report hash (the current bucket's),
-- callbacks stream, then per report: its candidates' index keys, then the record of
-- the job the index named (the early hash when it named none).
-- ARGV[1]: msgpack REPORT_CALL {now, events maxlen, profile, early expires (unix
-- seconds), reports}; each report a REPORT {outcome (delivered | undelivered), stat,
-- err, {candidate ids, best first: the first with an index names the job}, the job id
-- the caller found ('' = none)} (common.lua; router/store/ledger.py).
-- Returns a flat array, 7 per report (router/store/ledger.py's Reported): verdict,
-- status, job id, matched id, and for a report that made its message final (ok) the
-- record's to, from and connector (its latest attempt's), '' otherwise: the caller
-- counts the outcome by them (router/store/health.py). Verdict: ok (final status
-- written) | partial (waiting for other parts) | early (kept) | done (message final
-- already) | retry.
local args = cmsgpack.unpack(ARGV[1])
local now, maxlen = args[REPORT_CALL_NOW], args[REPORT_CALL_EVENTS_MAXLEN]
local profile = args[REPORT_CALL_PROFILE]
local out = {}
local function answer(verdict, st, job, part, to, from, via)
  out[#out + 1] = verdict; out[#out + 1] = st; out[#out + 1] = job; out[#out + 1] = part
  out[#out + 1] = to or ''; out[#out + 1] = from or ''; out[#out + 1] = via or ''
end
-- Written once for the whole batch: the messages made final (out of the awaiting set),
-- the index entries done with, whether a report was kept early.
local finished, done_with, kept = {}, {}, false
local k = 4  -- KEYS index of the last key taken
for _, r in ipairs(args[REPORT_CALL_REPORTS]) do
  local outcome, stat, err = r[REPORT_OUTCOME], r[REPORT_STAT], r[REPORT_ERR]
  local cands, expected = r[REPORT_CANDIDATES], r[REPORT_JOB]
  local job, part, at
  for i = 1, #cands do
    if not job then
      job = redis.call('GET', KEYS[k + i])
      if job then part, at = cands[i], k + i end
    end
  end
  local rec = KEYS[k + #cands + 1]
  k = k + #cands + 1
  if (job or '') ~= expected then
    answer('retry', '', job or '', part or '')
  else
    local info = {}
    if job then
      info = redis.call('HMGET', rec, 'status', 'part_ids', 'to', 'from', 'meta',
                        'status_callback_url', 'n', 'created_at')
    end
    local st = info[1]
    if not st or st == 'queued' or st == 'scheduled' or st == 'sending' then
      redis.call('HSET', KEYS[3], cands[1], cjson.encode({outcome, stat, err}))  -- a DLR
      kept = true
      answer('early', st or '', job or '', cands[1])
    elseif st ~= 'sent' then
      answer('done', st, job, part)
    else
      local parts = {part}
      if info[2] then parts = cjson.decode(long_value(rec, 'part_ids', info[2])) end
      local n = tonumber(info[7] or '0')
      local final = apply_report(rec, job, part, outcome, stat, err, now, parts,
                                 {to = info[3] or '', from = info[4] or '',
                                  meta = info[5] or '',
                                  url = long_value(rec, 'status_callback_url', info[6]) or ''},
                                 profile, KEYS[1], maxlen, KEYS[4], n, info[8] or nil)
      -- The part has its report: its index entry is done with.
      done_with[#done_with + 1] = KEYS[at]
      if final then
        finished[#finished + 1] = job
        answer('ok', final, job, part, info[3], info[4], latest_connector(rec, n))
      else
        answer('partial', st, job, part)
      end
    end
  end
end
if #finished > 0 then redis.call('ZREM', KEYS[2], unpack(finished)) end
if #done_with > 0 then redis.call('DEL', unpack(done_with)) end
if kept then redis.call('EXPIREAT', KEYS[3], args[REPORT_CALL_EARLY_EXPIRES]) end
return out
