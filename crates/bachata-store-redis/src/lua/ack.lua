-- ack: the oldest entry with this id that the device has not acked and that
-- has not expired is acked; the first ack by any device of a message with a
-- sender appends the receipt to the sender's log.
-- KEYS: the channel's 8 keys, then the expiring index, the retained bytes,
-- the pending messages.
-- ARGV: device, id, now, receipt payload, receipt expires_at, key prefix,
--       keep (ms the sender's keys live at least).
--
-- The sender's keys are derived here from the entry (standalone Redis allows
-- it); Redis Cluster appends the receipt with a second, per-slot script
-- (cluster_ack.lua, then cluster_receipt.lua).
retained_key = KEYS[10]
pending_key = KEYS[11]
local ch = keys_at(1, '')
local s, e, first = ack_oldest(ch, ARGV[1], ARGV[2], tonumber(ARGV[3]))
if not s then return {0} end
if first and e.kind == 'm' and e.sender ~= '' then
  local sender = channel_keys(ARGV[6], hex(e.sender))
  local rseq = append(sender, KEYS[9], 'r', ARGV[5], '', '', ARGV[4], ARGV[7])
  flush_counts()
  return {1, s, rseq, e.sender}
end
flush_counts()
return {1, s}
