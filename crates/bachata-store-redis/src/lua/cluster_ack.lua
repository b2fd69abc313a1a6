-- Cluster ack, step 1, on the acking channel's slot: as the ack of batch.lua, but the
-- receipt is left to the caller (the sender's log is on another slot): the
-- first ack by any device of a message with a sender returns the sender.
-- KEYS: the channel's 8 keys. ARGV: device, id, now.
-- Returns {0}, {1, seq, removed bytes} or {1, seq, removed bytes, sender}.
local ch = keys_at(1, '')
local s, e, first = ack_oldest(ch, ARGV[1], ARGV[2], tonumber(ARGV[3]))
if not s then return {0} end
if first and e.kind == 'm' and e.sender ~= '' then
  return {1, s, removed_bytes, e.sender}
end
return {1, s, removed_bytes}
