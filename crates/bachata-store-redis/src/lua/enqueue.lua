-- enqueue: dedupe check, queue limit of every destination, the retained
-- bytes limit, append to every destination, dedupe record. All or nothing:
-- every check runs before the first write but the retained count's, which
-- is taken back when it refuses.
-- KEYS[1] dedupe record, KEYS[2] expiring index, KEYS[3] retained bytes,
--   KEYS[4] pending messages, then 8 keys per destination.
-- ARGV: now, expires_at, dedupe_until, dedupe_px (0: no record), queue_limit,
--       sender ('' for the system), id, payload, retained_limit, keep (ms
--       the channels' keys live at least), then one tag per destination.
local now = tonumber(ARGV[1])
local n = #ARGV - 10
pending_key = KEYS[4]

local until_ = redis.call('GET', KEYS[1])
if until_ then
  local u = tonumber(until_)
  if not u then corrupt('dedupe record') end
  if u > now then return {'dup'} end
end

local limit = tonumber(ARGV[5])
for i = 1, n do
  if redis.call('ZCOUNT', KEYS[5 + (i - 1) * 8 + 3], '(' .. ARGV[1], '+inf') >= limit then
    return {'full', i}
  end
end

local bytes = string.format('%d', n * #ARGV[8])
if redis.call('INCRBY', KEYS[3], bytes) > tonumber(ARGV[9]) then
  redis.call('DECRBY', KEYS[3], bytes)
  return {'store_full'}
end

local out = {'ok'}
for i = 1, n do
  local ch = keys_at(5 + (i - 1) * 8, ARGV[10 + i])
  out[#out + 1] = append(ch, KEYS[2], 'm', ARGV[2], ARGV[6], ARGV[7], ARGV[8], ARGV[10])
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
added_bytes = 0 -- counted above, before the appends
flush_counts()
return out
