-- The reduce is claimed from `queued` only; the janitor puts a dead one back (requeue_fanout_reduce).
-- KEYS: analysis, reduce alive, analysis alive. ARGV: owner, ttl, now.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'reduce') ~= 'queued' then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'reduce', 'running', 'reduce_started_at', ARGV[3])
redis.call('SET', KEYS[3], 'fanout', 'EX', ARGV[2])
return 1
