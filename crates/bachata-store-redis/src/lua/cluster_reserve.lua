-- Cluster enqueue, step 2 for a message with several destinations, on one
-- destination's slot: reserves room in its queue for this attempt, unless
-- the message is in its log already (this attempt, or an earlier one within
-- the dedupe window, appended it). Running it twice reserves once.
-- KEYS[1] the channel's unacked zset, KEYS[2] its reservations,
-- KEYS[3] the message's marker.
-- ARGV: now, queue_limit, attempt token, reservation deadline.
-- Returns 'have', 'ok' (reserved) or 'full'.
if marker_seq(redis.call('GET', KEYS[3]), tonumber(ARGV[1]), ARGV[3]) then
  return 'have'
end
if redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 'ok' end
if queued(KEYS[1], KEYS[2], ARGV[1]) >= tonumber(ARGV[2]) then return 'full' end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return 'ok'
