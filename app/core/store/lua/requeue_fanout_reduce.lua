-- A reduce whose worker died (1: queued again; -1: it died MAX_LOST_ATTEMPTS times), or one queued
-- long ago that never started (its job may be lost): queued again.
-- KEYS: analysis, reduce alive. ARGV: now, stale_before, MAX_LOST_ATTEMPTS.
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local reduce = redis.call('HGET', KEYS[1], 'reduce')
if reduce == 'running' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
  if redis.call('HINCRBY', KEYS[1], 'reduce_lost', 1) >= tonumber(ARGV[3]) then return -1 end
elseif reduce == 'queued' then
  if tonumber(redis.call('HGET', KEYS[1], 'reduce_queued_at') or '0') > tonumber(ARGV[2]) then return 0 end
else
  return 0
end
redis.call('HSET', KEYS[1], 'reduce', 'queued', 'reduce_queued_at', ARGV[1])
return 1
