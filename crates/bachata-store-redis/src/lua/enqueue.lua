-- enqueue: dedupe check, queue limit of every destination, append to every
-- destination, dedupe record. All or nothing: every check runs before the
-- first write.
-- KEYS[1] dedupe record, KEYS[2] expiring index, then 8 keys per destination.
-- ARGV: now, expires_at, dedupe_until, dedupe_px (0: no record), queue_limit,
--       sender ('' for the system), id, payload, then one tag per destination.
local now = tonumber(ARGV[1])
local n = #ARGV - 8

local until_ = redis.call('GET', KEYS[1])
if until_ then
  local u = tonumber(until_)
  if not u then corrupt('dedupe record') end
  if u > now then return {'dup'} end
end

local limit = tonumber(ARGV[5])
for i = 1, n do
  local ch = keys_at(3 + (i - 1) * 8, ARGV[8 + i])
  if redis.call('ZCOUNT', ch.unacked, '(' .. ARGV[1], '+inf') >= limit then
    return {'full', i}
  end
end

local out = {'ok'}
for i = 1, n do
  local ch = keys_at(3 + (i - 1) * 8, ARGV[8 + i])
  out[#out + 1] = append(ch, KEYS[2], 'm', ARGV[2], ARGV[6], ARGV[7], ARGV[8])
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
return out
