-- Cluster enqueue, step 4 (the commit point), on the sender's slot: writes
-- the dedupe record "<dedupe_until> <attempt token>", unless another
-- attempt's record is live (a concurrent send of the same message won).
-- Running it twice for one attempt is 'ok' both times.
-- KEYS[1] the dedupe record. ARGV: now, dedupe_until, px, attempt token.
-- Returns 'ok' or 'dup'.
local v = redis.call('GET', KEYS[1])
if v then
  local u, t = string.match(v, '^(%d+) ?(.*)$')
  if not u then corrupt('dedupe record') end
  if tonumber(u) > tonumber(ARGV[1]) and t ~= ARGV[4] then return 'dup' end
end
redis.call('SET', KEYS[1], ARGV[2] .. ' ' .. ARGV[4], 'PX', ARGV[3])
return 'ok'
