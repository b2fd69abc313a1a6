-- Cluster ack, step 1, on the acking channel's slot: as ack.lua, but the
-- receipt is left to the caller (the sender's log is on another slot): the
-- first ack by any device of a message with a sender returns the sender.
-- KEYS: the channel's 8 keys. ARGV: device, id, now.
-- Returns {0}, {1, seq} or {1, seq, sender}.
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
        return {1, s, e.sender}
      end
      return {1, s}
    end
  end
end
return {0}
