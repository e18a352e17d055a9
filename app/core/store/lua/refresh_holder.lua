-- Only the holder refreshes its liveness key; a key lost while frozen is not stolen back.
-- KEYS: alive key. ARGV: owner, ttl.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
else
  return 0
end
