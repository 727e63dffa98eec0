-- After inbound_publish.lua. KEYS: inbound stream, events. ARGV: events maxlen,
-- profile, message, parts, incomplete, opt_out ('' = none). One whole message: stored
-- and published. Returns its entry id.
local f = {'message', ARGV[3], 'parts', ARGV[4], 'incomplete', ARGV[5]}
if ARGV[6] ~= '' then f[#f + 1] = 'opt_out'; f[#f + 1] = ARGV[6] end
local id = redis.call('XADD', KEYS[1], '*', unpack(f))
publish(KEYS[2], ARGV[1], ARGV[2], id, ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return id
