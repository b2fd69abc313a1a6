-- touch: registers a device of the channel as seen at `now` (creating the
-- channel's counter at 0 and its epoch when it has none, so that the
-- connection knows the epoch it reads from), forgets the
-- channel's devices not seen since `stale` (protocol.md section 9:
-- `--forget-after`), and keeps the channel's `seq`, `epoch` and `devices` keys for
-- at least `keep` more milliseconds, so that a channel in use never expires
-- (live connections touch their device now and then).
-- KEYS: the channel's 8 keys. ARGV: device, now, stale, keep.
local ch = keys_at(1, '')
if redis.call('SET', ch.seq, '0', 'NX') then new_epoch(ch) end
redis.call('HSET', ch.devices, ARGV[1], ARGV[2])
local stale = tonumber(ARGV[3])
local devices = redis.call('HGETALL', ch.devices)
for i = 1, #devices, 2 do
  local seen = tonumber(devices[i + 1])
  if seen and seen <= stale then
    redis.call('HDEL', ch.devices, devices[i])
  end
end
keep_for(ch.seq, ARGV[4], ch.epoch)
keep_for(ch.devices, ARGV[4])
return 0
