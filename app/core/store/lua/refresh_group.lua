-- The holder keeps its group claim and the analysis's liveness; 0 once the analysis is no longer
-- running (failed, retried) or another attempt holds the group: the attempt stops.
-- KEYS: analysis, group alive, analysis alive. ARGV: owner, ttl.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], 'fanout', 'EX', ARGV[2])
return 1
