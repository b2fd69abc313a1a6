-- read: up to `limit` entries with seq > after, not expired at `now`, not
-- acked by `device`, in log order. Returns seq, value, seq, value, ...
-- KEYS: the channel's 8 keys. ARGV: after, limit, now, device.
local ch = keys_at(1, '')
local limit = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local dev = ARGV[4]
local out = {}
local found = 0
local cursor = ARGV[1]
while found < limit do
  local want = limit - found
  if want < 32 then want = 32 end
  if want > 512 then want = 512 end
  local got = redis.call('ZRANGE', ch.log, '(' .. cursor, '+inf', 'BYSCORE', 'LIMIT', 0, want,
    'WITHSCORES')
  if #got == 0 then break end
  local seqs = {}
  for i = 2, #got, 2 do seqs[#seqs + 1] = got[i] end
  local acks = redis.call('HMGET', ch.acks, unpack(seqs))
  for i, s in ipairs(seqs) do
    local v = got[2 * i - 1]
    local e = parse(v, s)
    if e.exp > now and not has_ack(acks[i], dev) then
      out[#out + 1] = s
      out[#out + 1] = v
      found = found + 1
      if found >= limit then break end
    end
  end
  if #seqs < want then break end
  cursor = seqs[#seqs]
end
return out
