-- A training run's reduce whose worker died: queued again, or failed after MAX_LOST_ATTEMPTS deaths.
-- KEYS: training run, its alive key, pending set. ARGV: now, MAX_LOST_ATTEMPTS, error JSON, run id.
if redis.call('HGET', KEYS[1], 'status') ~= 'reducing' then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('HINCRBY', KEYS[1], 'reduce_lost', 1) >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[3], 'updated_at', ARGV[1])
  redis.call('SREM', KEYS[3], ARGV[4])
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1])
redis.call('HDEL', KEYS[1], 'reduce_started_at', 'reduce_queued_at')
return 1
