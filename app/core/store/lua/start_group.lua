-- An attempt claims its group: the analysis must be running (fanned out), the group not done, and
-- no live attempt may hold it. Taking over one that died counts a loss; MAX_LOST_ATTEMPTS of them: -1.
-- KEYS: analysis, group, group alive, groups done, attempts-started counter.
-- ARGV: owner, ttl, now, worker, k, MAX_LOST_ATTEMPTS.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('SISMEMBER', KEYS[4], ARGV[5]) == 1 then return 0 end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
if redis.call('HGET', KEYS[2], 'status') == 'running' and redis.call('HINCRBY', KEYS[2], 'lost', 1) >= tonumber(ARGV[6]) then
  redis.call('DEL', KEYS[3])
  return -1
end
redis.call('HSET', KEYS[2], 'status', 'running', 'worker', ARGV[4], 'started_at', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'runs', 1)
redis.call('INCR', KEYS[5])
return 1
