-- Move an entry to the dead-letter stream with its reason, then ack + delete.
-- KEYS: work stream, dead-letter stream, stats hash. ARGV: group, entry id, then the
-- dead letter's fields and values.
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'dead_lettered', 1)
return 1
