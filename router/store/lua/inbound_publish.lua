-- Shared by the inbound store scripts (prepended to each): publish a stored message
-- (its entry `id` on the inbound stream) as an `inbound` event, capped like the
-- ledger's events.
local function publish(events, maxlen, profile, id, message, parts, incomplete, opt_out)
  local ev = {'type', 'inbound', 'id', 'in-' .. id, 'profile', profile, 'message', message,
              'parts', parts, 'incomplete', incomplete}
  if opt_out and opt_out ~= '' then ev[#ev + 1] = 'opt_out'; ev[#ev + 1] = opt_out end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, '*', unpack(ev))
end
