-- The janitor: a group whose attempt died goes back to queued (1), or fails the analysis (-1).
-- KEYS: analysis, group, group alive. ARGV: MAX_LOST_ATTEMPTS.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HINCRBY', KEYS[2], 'lost', 1) >= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[2], 'status', 'queued')
return 1
