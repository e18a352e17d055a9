-- Create the record only if absent, or re-arm it when its last attempt failed; returns
-- 1 created, 2 re-armed, 0 already there. One script, so 100 identical concurrent
-- submissions make exactly one record and one job. (Analyses, overlaps, training runs.)
-- KEYS: record hash, recent zset. ARGV: id, now, request JSON, progress JSON.
local key = KEYS[1]
local status = redis.call('HGET', key, 'status')
if status and status ~= 'failed' then return 0 end
local created = 1
if status then
  created = 2
  redis.call('HDEL', key, 'error', 'result', 'lost')
  redis.call('HSET', key, 'status', 'queued', 'updated_at', ARGV[2], 'progress', ARGV[4])
else
  redis.call('HSET', key, 'id', ARGV[1], 'status', 'queued', 'created_at', ARGV[2],
             'updated_at', ARGV[2], 'request', ARGV[3], 'progress', ARGV[4], 'runs', 0)
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return created
