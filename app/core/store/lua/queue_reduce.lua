-- A training run whose analyses are all done: queued -> reducing, once.
-- KEYS: training run. ARGV: now.
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'reducing', 'reduce_queued_at', ARGV[1], 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'reduce_started_at')
return 1
