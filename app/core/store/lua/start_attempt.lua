-- Claim an analysis and mark it running, atomically; 0 when a live attempt holds it or it is over.
-- Taking over an attempt that died (its key expired) once too often fails the analysis instead.
-- KEYS: analysis, alive, running set, attempts-started counter, token.
-- ARGV: owner, ttl, now, worker, progress JSON, analysis id, MAX_LOST_ATTEMPTS, lost error JSON.
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'done' or status == 'failed' then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
if status == 'running' and redis.call('HINCRBY', KEYS[1], 'lost', 1) >= tonumber(ARGV[7]) then
  redis.call('DEL', KEYS[2], KEYS[5])
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[8], 'updated_at', ARGV[3])
  redis.call('SREM', KEYS[3], ARGV[6])
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[4], 'started_at', ARGV[3],
           'updated_at', ARGV[3], 'progress_at', ARGV[3], 'progress', ARGV[5])
redis.call('HDEL', KEYS[1], 'error')
redis.call('HINCRBY', KEYS[1], 'runs', 1)
redis.call('SADD', KEYS[3], ARGV[6])
redis.call('INCR', KEYS[4])
return 1
