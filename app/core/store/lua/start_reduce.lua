-- A worker claims a training run's queued reduce. KEYS: training run, its alive key. ARGV: owner, ttl, now.
if redis.call('HGET', KEYS[1], 'status') ~= 'reducing' then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'reduce_started_at', ARGV[3], 'updated_at', ARGV[3])
return 1
