-- The janitor's safety net: all groups done and no reduce recorded: queued, once.
-- KEYS: analysis. ARGV: now.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'reduce') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'reduce', 'queued', 'reduce_queued_at', ARGV[1])
return 1
