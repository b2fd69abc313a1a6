-- expire, for one channel: drops up to `batch` entries with
-- expires_at <= now, then (when none is left) sets the channel's score in the
-- expiring index to its earliest expiry, or removes it when it has no entry.
-- KEYS: the channel's 8 keys, then the expiring index, the retained bytes,
-- the pending messages.
-- ARGV: now, the channel's tag, batch.
retained_key = KEYS[10]
pending_key = KEYS[11]
local ch = keys_at(1, ARGV[2])
local batch = tonumber(ARGV[3])
local dropped, more = drop_expired(ch, ARGV[1], batch)
flush_counts()
if more then return {dropped, 1} end
local earliest = earliest_expiry(ch)
if earliest == '' then
  redis.call('ZREM', KEYS[9], ch.tag)
else
  redis.call('ZADD', KEYS[9], earliest, ch.tag)
end
return {dropped, 0}
