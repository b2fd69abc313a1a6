-- ack: the oldest entry with this id that the device has not acked and that
-- has not expired is acked; the first ack by any device of a message with a
-- sender appends the receipt to the sender's log.
-- KEYS: the channel's 8 keys, then the expiring index.
-- ARGV: device, id, now, receipt payload, receipt expires_at, key prefix.
--
-- The sender's keys are derived here from the entry (standalone Redis allows
-- it); Redis Cluster will need the receipt appended by a second, per-slot
-- script.
local ch = keys_at(1, '')
local dev = ARGV[1]
local now = tonumber(ARGV[3])
local list = redis.call('HGET', ch.ids, ARGV[2])
if not list then return {0} end
for s in string.gmatch(list, '%d+') do
  local v = redis.call('HGET', ch.ent, s)
  if v then
    local e = parse(v, s)
    local acks = redis.call('HGET', ch.acks, s)
    if e.exp > now and not has_ack(acks, dev) then
      local first = ack_seq(ch, s, e, dev, acks)
      if first and e.kind == 'm' and e.sender ~= '' then
        local sender = channel_keys(ARGV[6], hex(e.sender))
        local rseq = append(sender, KEYS[9], 'r', ARGV[5], '', '', ARGV[4])
        return {1, s, rseq, e.sender}
      end
      return {1, s}
    end
  end
end
return {0}
