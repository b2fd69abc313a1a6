-- batch: every enqueue and ack of one writer batch (standalone Redis), in
-- their order, in one call: the per-call costs (the call itself, the
-- counts' INCRBYs, a channel's lifetime and expiry index, its devices) are
-- paid once per batch instead of once per request.
-- KEYS: the expiring index, the retained bytes, the pending messages, the
--   undelivered webhook's due index, then each request's keys.
-- ARGV: per request its kind ('e' enqueue, 'a' ack), its number of keys,
--   its number of arguments, then its arguments.
-- Returns one reply per request, in order: the request's own (below), or
-- {'err', message} when it failed (the others still run).
local expiring = KEYS[1]
retained_key = KEYS[2]
pending_key = KEYS[3]
local undelivered = KEYS[4]

-- enqueue: dedupe check, queue limit of every destination, the retained
-- bytes limit, append to every destination, dedupe record. All or nothing:
-- every check runs before the first write.
-- Keys (from k): the dedupe record, then 8 keys per destination.
-- Arguments (from a): now, expires_at, dedupe_until, dedupe_px (0: no
--   record), queue_limit, sender ('' for the system), id, payload,
--   retained_limit, keep (ms the channels' keys live at least), notify_at
--   (the undelivered webhook's due time, 0: none), then one tag per
--   destination.
-- With a notify_at, each copy goes into the due index as "<tag> <seq>".
-- Replies {'ok', seq...}, {'dup'}, {'full', i} or {'store_full'}.
local function enqueue(k, a, nargs)
  local now = tonumber(ARGV[a])
  local n = nargs - 11
  local until_ = redis.call('GET', KEYS[k])
  if until_ then
    local u = tonumber(until_)
    if not u then corrupt('dedupe record') end
    if u > now then return {'dup'} end
  end
  local limit = tonumber(ARGV[a + 4])
  for i = 1, n do
    if redis.call('ZCOUNT', KEYS[k + 1 + (i - 1) * 8 + 3], '(' .. ARGV[a], '+inf') >= limit then
      return {'full', i}
    end
  end
  local payload = ARGV[a + 7]
  if retained_total() + n * #payload > tonumber(ARGV[a + 8]) then
    return {'store_full'}
  end
  local out = {'ok'}
  local notify_at = ARGV[a + 10]
  for i = 1, n do
    local ch = keys_at(k + 1 + (i - 1) * 8, ARGV[a + 10 + i])
    local seq = append(ch, expiring, 'm', ARGV[a + 1], ARGV[a + 5], ARGV[a + 6], payload,
      ARGV[a + 9])
    if notify_at ~= '0' then
      redis.call('ZADD', undelivered, notify_at, ch.tag .. ' ' .. string.format('%d', seq))
    end
    out[#out + 1] = seq
  end
  if ARGV[a + 3] ~= '0' then
    redis.call('SET', KEYS[k], ARGV[a + 2], 'PX', ARGV[a + 3])
  end
  return out
end

-- ack: the oldest entry with this id that the device has not acked and that
-- has not expired is acked; the first ack by any device of a message with a
-- sender appends the receipt to the sender's log (whose keys are derived
-- here from the entry, as standalone Redis allows; Redis Cluster appends
-- the receipt with a second, per-slot script: cluster_ack.lua, then
-- cluster_receipt.lua).
-- Keys (from k): the channel's 8 keys.
-- Arguments (from a): device, id, now, receipt payload, receipt
--   expires_at, key prefix, keep (ms the sender's keys live at least), the
--   channel's tag when acks take messages out of the due index ('' when
--   this node never put any there).
-- Replies {0} (nothing to ack), {1, seq} or {1, seq, receipt seq, sender}.
local function ack(k, a)
  local ch = keys_at(k, '')
  local s, e, first = ack_oldest(ch, ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]))
  if not s then return {0} end
  if first and e.kind == 'm' and ARGV[a + 7] ~= '' then
    redis.call('ZREM', undelivered, ARGV[a + 7] .. ' ' .. s)
  end
  if first and e.kind == 'm' and e.sender ~= '' then
    local sender = channel_keys(ARGV[a + 5], hex(e.sender))
    local rseq = append(sender, expiring, 'r', ARGV[a + 4], '', '', ARGV[a + 3], ARGV[a + 6])
    return {1, s, rseq, e.sender}
  end
  return {1, s}
end

local replies = {}
local k, a = 5, 1
while a <= #ARGV do
  local kind, nkeys, nargs = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local ok, reply
  if kind == 'e' then
    ok, reply = pcall(enqueue, k, a + 3, nargs)
  else
    ok, reply = pcall(ack, k, a + 3)
  end
  if ok then
    replies[#replies + 1] = reply
  elseif type(reply) == 'table' and reply.err then
    replies[#replies + 1] = {'err', reply.err}
  else
    replies[#replies + 1] = {'err', tostring(reply)}
  end
  k = k + nkeys
  a = a + 3 + nargs
end
flush_counts()
return replies
