-- A failed training run's reduce may run again (after a retry): failed -> queued.
-- KEYS: training run, pending set. ARGV: now, run id.
if redis.call('HGET', KEYS[1], 'status') ~= 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'error', 'reduce_lost', 'reduce_started_at', 'reduce_queued_at')
redis.call('SADD', KEYS[2], ARGV[2])
return 1
