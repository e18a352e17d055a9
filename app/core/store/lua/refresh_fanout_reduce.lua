-- The reduce's holder keeps its claim and the analysis's liveness.
-- KEYS: analysis, reduce alive, analysis alive. ARGV: owner, ttl, now.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], 'fanout', 'EX', ARGV[2])
redis.call('HSET', KEYS[1], 'progress_at', ARGV[3])
return 1
