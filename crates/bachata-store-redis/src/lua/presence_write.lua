-- presence_write: sets this node's connection counts of one channel
-- (ARGV[2]; empty: removes the node), each node's counts living
-- until Redis's clock passes their deadline; drops the fields of nodes that
-- stopped writing, and keeps the hash as long as its longest-lived field.
-- KEYS: the channel's online hash. ARGV: node, counts, ttl ms.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], (now + ttl) .. '\n' .. ARGV[2])
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local deadline = tonumber(string.match(all[i + 1], '^%d+'))
  if deadline == nil or deadline < now then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 0
