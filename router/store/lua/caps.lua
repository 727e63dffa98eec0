-- Daily caps of 10DLC campaigns, for one batch, atomically (every instance shares
-- the counters). KEYS[1]: the day's hash, campaign -> messages counted.
-- ARGV: ttl, n, then n pairs (campaign, cap), then per job: k, then k candidate
-- campaigns in order ('' = a candidate no cap applies to). Returns, per job, the
-- 1-based index of the first candidate with room (counted), or 0 (every one full).
local key = KEYS[1]
local n = tonumber(ARGV[2])
local cap, used, names = {}, {}, {}
local i = 3
for j = 1, n do
  names[j] = ARGV[i]
  cap[ARGV[i]] = tonumber(ARGV[i + 1])
  i = i + 2
end
local now = redis.call('HMGET', key, unpack(names))
for j = 1, n do used[names[j]] = tonumber(now[j] or '0') end
local out, added = {}, {}
while i <= #ARGV do
  local k = tonumber(ARGV[i])
  local pick = 0
  for j = 1, k do
    local c = ARGV[i + j]
    if c == '' then
      pick = j
      break
    end
    if used[c] < cap[c] then
      used[c] = used[c] + 1
      added[c] = (added[c] or 0) + 1
      pick = j
      break
    end
  end
  i = i + k + 1
  out[#out + 1] = pick
end
local any = false
for c, a in pairs(added) do
  redis.call('HINCRBY', key, c, a)
  any = true
end
if any then redis.call('EXPIRE', key, ARGV[1]) end
return out
