-- Cluster expire, for one channel: drops up to `batch` entries with
-- expires_at <= now. When none is left due, also returns the channel's
-- earliest expiry ('' when it holds no entry) and its seq counter, for the
-- caller to update the channel's score in its expiry index shard (on
-- another slot) and to notice appends that raced with that.
-- KEYS: the channel's 8 keys. ARGV: now, batch.
-- Returns {dropped, removed bytes, 1} (more due) or
-- {dropped, removed bytes, 0, earliest, seq counter}.
local ch = keys_at(1, '')
local dropped, more = drop_expired(ch, ARGV[1], tonumber(ARGV[2]))
if more then return {dropped, removed_bytes, 1} end
return {dropped, removed_bytes, 0, earliest_expiry(ch), redis.call('GET', ch.seq) or '0'}
