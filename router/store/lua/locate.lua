-- Jobs' locators, many in one call (a single server: on Redis Cluster each locator is
-- in a slot of its own, so each goes as its own SET): job id -> profile, kept where one
-- exists already (the first profile that used the id), expiring with the records.
-- KEYS: each job's locator. ARGV[1]: retention (seconds); ARGV[1 + i]: KEYS[i]'s profile.
-- Returns the number of locators written.
local written = 0
for i, key in ipairs(KEYS) do
  if redis.call('SET', key, ARGV[i + 1], 'NX', 'EX', ARGV[1]) then
    written = written + 1
  end
end
return written
