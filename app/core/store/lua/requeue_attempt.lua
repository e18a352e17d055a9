-- An orphaned analysis (its attempt's key expired) goes back to queued, keeping its partial records;
-- 0 if someone else did, or if its attempts died MAX_LOST_ATTEMPTS times: then it is failed instead.
-- KEYS: analysis, alive, running set, token. ARGV: now, analysis id, MAX_LOST_ATTEMPTS, lost error JSON.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('HINCRBY', KEYS[1], 'lost', 1) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[4], 'updated_at', ARGV[1])
  redis.call('DEL', KEYS[4])
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[1])
return 1
