-- undelivered_take: claims the copies of one due index (the global one, or
-- one cluster shard) whose time has come: each is handed to this caller
-- and scored again with the caller's lease, so no other node takes it
-- until the lease runs out. The caller removes it (ZREM) once the
-- webhook's call was made, or once it finds the copy acked or gone.
-- KEYS: the due index. ARGV: now, lease_until, limit.
-- Returns the claimed members ("<tag> <seq>"), oldest due first.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[3])
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], m)
end
return due
