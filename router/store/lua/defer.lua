-- Move an entry to the schedule: ZADD due member, then ack + delete.
-- KEYS: work stream, schedule zset. ARGV: group, entry id, due (unix seconds), member.
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
