-- presence_read: the counts of every node but the reader's own whose
-- deadline Redis's clock has not passed.
-- KEYS: the channel's online hash. ARGV: the reading node.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local deadline = tonumber(string.match(all[i + 1], '^%d+'))
  if all[i] ~= ARGV[1] and deadline ~= nil and deadline >= now then
    out[#out + 1] = all[i + 1]
  end
end
return out
