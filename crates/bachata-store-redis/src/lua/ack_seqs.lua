-- ack_seqs: marks entries as acked by the device; gone or already acked
-- seqs are ignored. No receipt is ever appended here.
-- KEYS: the channel's 8 keys, then (standalone Redis only) the retained
-- bytes and the pending messages. ARGV: device, then seqs.
-- Returns the payload bytes removed (cluster mode counts them itself).
if #KEYS >= 10 then
  retained_key = KEYS[9]
  pending_key = KEYS[10]
end
local ch = keys_at(1, '')
local dev = ARGV[1]
for i = 2, #ARGV do
  local s = ARGV[i]
  local v = entry_at(ch, s)
  if v then
    local e = parse(v, s)
    local acks = redis.call('HGET', ch.acks, s)
    if not has_ack(acks, dev) then
      ack_seq(ch, s, e, dev, acks, nil)
    end
  end
end
flush_counts()
return removed_bytes
