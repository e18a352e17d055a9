-- An attempt that stops without finishing (a transient error RQ retries): the group is queued again.
-- KEYS: group, group alive. ARGV: owner.
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'status', 'queued')
end
return 1
