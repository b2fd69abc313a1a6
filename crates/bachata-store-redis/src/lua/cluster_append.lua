-- Cluster enqueue, step 3, on one destination's slot: appends the message
-- unless its marker stands (then returns the seq it got), and writes the
-- marker. With a reservation the queue limit was checked by step 2 and is
-- not checked again (the reservation is consumed, even if it went stale), so
-- a message with several destinations is never refused half way.
-- KEYS: the channel's 8 keys, its reservations, the message's marker.
-- ARGV: now, expires_at, dedupe_until, marker px, reserved ('1' or '0'),
--       queue_limit (checked when not reserved), attempt token, sender ('' for
--       the system), id, payload, keep (ms the channel's keys live at least),
--       over ('1': the retained bytes limit refuses it, checked after the
--       queue limit, as on standalone Redis; only when not reserved).
-- Returns {'ok', seq, bytes appended (0 when it was there already)},
-- {'full'} or {'store_full'}.
local ch = keys_at(1, '')
local had = marker_seq(redis.call('GET', KEYS[10]), tonumber(ARGV[1]), ARGV[7])
if had then
  -- A concurrent send of the same message appended it: free our room.
  redis.call('ZREM', KEYS[9], ARGV[7])
  return {'ok', had, 0}
end
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[9], ARGV[7])
elseif queued(ch.unacked, KEYS[9], ARGV[1]) >= tonumber(ARGV[6]) then
  return {'full'}
elseif ARGV[12] == '1' then
  return {'store_full'}
end
local seq = append(ch, nil, 'm', ARGV[2], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
local marker = ARGV[3] .. ' ' .. string.format('%d', seq) .. ' ' .. ARGV[7]
redis.call('SET', KEYS[10], marker, 'PX', ARGV[4])
return {'ok', seq, #ARGV[10]}
