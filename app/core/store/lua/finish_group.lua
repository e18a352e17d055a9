-- A group is done; 1 for the one call that completes the set and must enqueue the reduce.
-- KEYS: analysis, group, group alive, groups done.
-- ARGV: k, now, bytes read, owner, tensors, bytes, number of groups.
redis.call('HSET', KEYS[2], 'status', 'done', 'bytes_read', ARGV[3], 'ended_at', ARGV[2],
           'tensors_done', ARGV[5], 'bytes_done', ARGV[6], 'bytes_per_s', '')
if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
redis.call('SADD', KEYS[4], ARGV[1])
if redis.call('SCARD', KEYS[4]) < tonumber(ARGV[7]) then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'reduce') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'reduce', 'queued', 'reduce_queued_at', ARGV[2])
return 1
