-- Records found by job id alone, on a single server (on Redis Cluster an id's keys are
-- in several slots: the ledger pipelines an HGETALL each instead). KEYS: each id's
-- record key in each profile looked in, id by id, the profiles in the order they are
-- looked in. ARGV[1]: the number of profiles. Returns, per id, {} (no record) or the
-- first that exists: {its profile's position (1-based), field, value, ...}.
local per = tonumber(ARGV[1])
local out = {}
for first = 1, #KEYS, per do
  local found = {}
  for p = 0, per - 1 do
    local fields = redis.call('HGETALL', KEYS[first + p])
    if #fields > 0 then
      found = {p + 1}
      for i = 1, #fields do found[i + 1] = fields[i] end
      break
    end
  end
  out[#out + 1] = found
end
return out
