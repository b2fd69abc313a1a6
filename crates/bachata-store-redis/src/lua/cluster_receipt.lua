-- Cluster ack, step 2, on the sender's slot: appends the receipt for one
-- acked entry, once: the marker (written with it) makes a retry return the
-- same seq.
-- KEYS: the sender's 8 keys, the receipt's marker.
-- ARGV: receipt payload, receipt expires_at, marker px, keep (ms the sender's
--       keys live at least).
-- Returns {the receipt's seq, bytes appended (0 on a retry)}.
local m = redis.call('GET', KEYS[9])
if m then return {m, 0} end
local seq = append(keys_at(1, ''), nil, 'r', ARGV[2], '', '', ARGV[1], ARGV[4])
redis.call('SET', KEYS[9], string.format('%d', seq), 'PX', ARGV[3])
return {seq, #ARGV[1]}
