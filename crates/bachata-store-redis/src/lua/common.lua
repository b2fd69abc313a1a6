-- Shared by every script (prepended after the shebang line).
--
-- An entry is a member of the channel's `log` sorted set, scored by its seq:
--   "<kind> <expires_at> <sender_len> <id_len> <seq>\n" .. sender .. id .. payload
-- kind "m" is a data message (sender_len 0: sent by the system), "r" a
-- receipt (both lengths 0); the seq in the header makes every member
-- unique. One sorted set holds both the order and the entries: an append
-- or a removal is one write, and a read returns the entries themselves.
-- Acks of an entry are in the channel's `acks` hash under its seq as
-- "\n" .. device for each device that acked, in ack order (device names
-- have no control characters; "" is the default device).
--
-- Times and seqs cross the boundary as decimal strings and are never turned
-- back into text by Lua (whose number formatting is not exact), except
-- through string.format('%d').
--
-- Every redis.call costs (argument conversion, command lookup, AOF
-- propagation for writes) far more than Lua code around it: the helpers
-- below make as few as they can on the paths every message takes.

-- Standalone Redis: the key of the count of retained payload bytes over all
-- channels (`bachata:retained`); the net change of a script goes there in
-- one INCRBY (`flush_retained`). nil in cluster mode, where the caller
-- keeps the count (in shards that no single-slot script can reach).
local retained_key = nil
-- Payload bytes this script removed and appended (the cluster scripts
-- return them).
local removed_bytes = 0
local added_bytes = 0
-- Standalone Redis: the count of messages no device acked over all
-- channels (`bachata:pending`, for the `bachata_pending_messages` metric),
-- and this script's change to it.
local pending_key = nil
local pending_delta = 0
-- The retained bytes count when this script first needed it (standalone;
-- see retained_total).
local retained_base = nil

-- What this script call already did that the later requests of the same
-- call need not do again (a standalone batch runs many requests in one
-- call; a script of one request starts and ends empty): the lifetime each
-- key was given, the expiry each channel tag was indexed with, each
-- channel's devices.
local kept = {}
local indexed = {}
local devices_of = {}

local function corrupt(what)
  error({err = 'BACHATA_CORRUPT ' .. what})
end

local function parse(v, seq)
  local kind, exp, slen, ilen, pos = string.match(v, '^(%a) (%d+) (%d+) (%d+) %d+\n()')
  if not kind then corrupt('entry ' .. tostring(seq)) end
  slen = tonumber(slen)
  ilen = tonumber(ilen)
  if #v < pos + slen + ilen - 1 then corrupt('entry ' .. tostring(seq)) end
  return {
    kind = kind,
    exp = tonumber(exp),
    sender = string.sub(v, pos, pos + slen - 1),
    id = string.sub(v, pos + slen, pos + slen + ilen - 1),
    size = #v - (pos + slen + ilen) + 1,
  }
end

-- The entry at seq `s` (a string), or nil.
local function entry_at(ch, s)
  return redis.call('ZRANGE', ch.log, s, s, 'BYSCORE')[1]
end

-- Standalone Redis: the retained payload bytes over all channels, this
-- script's changes so far included (one GET per script call).
local function retained_total()
  if not retained_base then
    retained_base = tonumber(redis.call('GET', retained_key) or '0') or 0
  end
  return retained_base + added_bytes - removed_bytes
end

-- Standalone Redis: adds the script's net changes to the retained bytes
-- and pending messages counts. Every script that appends or removes calls
-- it before returning.
local function flush_counts()
  local d = added_bytes - removed_bytes
  if retained_key and d ~= 0 then
    redis.call('INCRBY', retained_key, string.format('%d', d))
  end
  if pending_key and pending_delta ~= 0 then
    redis.call('INCRBY', pending_key, string.format('%d', pending_delta))
  end
end

-- Makes `key` live at least `ms` more milliseconds (a string; relative,
-- so that the nodes' clocks and Redis's need not agree), if it exists:
-- protocol.md section 9, state follows pending work. Only a channel's
-- `seq`, `epoch` and `devices` keys have lifetimes; its other keys are
-- collections that Redis deletes once their last element goes, which
-- every entry's removal (ack or expiry) sees to. A key is extended a
-- quarter beyond what is asked, so that the appends that follow find it
-- long enough: one PTTL per append. `also`, when given, gets the same
-- lifetime whenever `key` is extended.
local function keep_for(key, ms, also)
  local d = tonumber(ms)
  if kept[key] and kept[key] >= d then return end
  kept[key] = d
  local t = redis.call('PTTL', key)
  if t == -1 or (t >= 0 and t < d) then
    local ext = string.format('%d', d + math.floor(d / 4))
    redis.call('PEXPIRE', key, ext)
    if also then redis.call('PEXPIRE', also, ext) end
  end
end

local function has_ack(acks, dev)
  return acks and string.find(acks .. '\n', '\n' .. dev .. '\n', 1, true) ~= nil
end

local function hex(s)
  if #s == 0 then return '' end
  return string.format(string.rep('%02x', #s), string.byte(s, 1, -1))
end

-- The keys of one channel, named as in the crate docs.
local function channel_keys(prefix, tag)
  local p = prefix .. '{' .. tag .. '}:'
  return {
    tag = tag,
    seq = p .. 'seq', log = p .. 'log', exp = p .. 'exp', unacked = p .. 'unacked',
    epoch = p .. 'epoch', acks = p .. 'acks', ids = p .. 'ids', devices = p .. 'devices',
  }
end

-- Starts a new epoch of the channel (protocol.md section 8): a name for
-- this life of its counter, so that a connection that read an earlier
-- life starts over. Redis's clock makes it unique.
local function new_epoch(ch)
  local t = redis.call('TIME')
  redis.call('SET', ch.epoch, t[1] .. string.format('%06d', tonumber(t[2])))
end

-- The counter answered 1: it was just created, or created at 0 by a
-- connection's touch (which made the epoch). Without an epoch it is a new
-- life. Entries left from an earlier life (their counter expired or was
-- lost while they stayed) keep their seqs: the counter goes on after the
-- highest. Returns the seq to use.
local function first_seq(ch)
  if redis.call('EXISTS', ch.epoch) == 0 then new_epoch(ch) end
  local last = redis.call('ZRANGE', ch.log, '+inf', '-inf', 'BYSCORE', 'REV', 'LIMIT', 0, 1,
    'WITHSCORES')
  if last[2] then
    local seq = tonumber(last[2]) + 1
    redis.call('SET', ch.seq, string.format('%d', seq))
    return seq
  end
  return 1
end

-- Appends an entry; returns its seq (a Lua number). `expiring` is the
-- global expiry index (standalone), nil in cluster mode (the caller indexes
-- the channel in its shard). The channel's counter then lives at least
-- `keep` more milliseconds (see keep_for). The bytes go to `added_bytes`.
local function append(ch, expiring, kind, exp, sender, id, payload, keep)
  local seq = redis.call('INCR', ch.seq)
  if seq == 1 then seq = first_seq(ch) end
  local s = string.format('%d', seq)
  redis.call('ZADD', ch.log, s,
    kind .. ' ' .. exp .. ' ' .. #sender .. ' ' .. #id .. ' ' .. s .. '\n' .. sender .. id .. payload)
  -- Each entry is in one expiry index: a data message no device acked in
  -- `unacked` (which the queue limit counts), any other entry in `exp`.
  if kind == 'm' then
    redis.call('ZADD', ch.unacked, exp, s)
    pending_delta = pending_delta + 1
    if redis.call('HSETNX', ch.ids, id, s) == 0 then
      redis.call('HSET', ch.ids, id, redis.call('HGET', ch.ids, id) .. ' ' .. s)
    end
  else
    redis.call('ZADD', ch.exp, exp, s)
  end
  -- The channel's earliest expiry, kept as a lower bound (once per call
  -- unless it gets lower: only `expire` removes a tag).
  if expiring then
    local e = tonumber(exp)
    if not indexed[ch.tag] or e < indexed[ch.tag] then
      redis.call('ZADD', expiring, 'LT', exp, ch.tag)
      indexed[ch.tag] = e
    end
  end
  added_bytes = added_bytes + #payload
  keep_for(ch.seq, keep, ch.epoch)
  return seq
end

-- Removes entry `s` (parsed as `e`) and its index records. `acked`: the
-- entry has acks recorded (its `acks` field exists; a message with acks is
-- in `exp`). `pending`: it may still be in `unacked` (no device acked it).
-- `list`: its id's seq list in `ids`, when the caller read it already.
local function remove(ch, s, e, acked, pending, list)
  removed_bytes = removed_bytes + e.size
  redis.call('ZREMRANGEBYSCORE', ch.log, s, s)
  if acked or e.kind ~= 'm' then redis.call('ZREM', ch.exp, s) end
  if acked then redis.call('HDEL', ch.acks, s) end
  if e.kind ~= 'm' then return end
  if pending then pending_delta = pending_delta - redis.call('ZREM', ch.unacked, s) end
  list = list or redis.call('HGET', ch.ids, e.id)
  if not list then return end
  if list == s then
    redis.call('HDEL', ch.ids, e.id)
    return
  end
  local rest = {}
  for x in string.gmatch(list, '%d+') do
    if x ~= s then rest[#rest + 1] = x end
  end
  if #rest == 0 then
    redis.call('HDEL', ch.ids, e.id)
  else
    redis.call('HSET', ch.ids, e.id, table.concat(rest, ' '))
  end
end

-- Records `dev`'s ack of entry `s` (parsed as `e`), which it has not acked;
-- `acks` are the entry's acks so far (nil: none). Removes the entry once
-- every known device acked it. Returns true when this was the first ack by
-- any device.
local function ack_seq(ch, s, e, dev, acks, list)
  local first = not acks
  local now_acks = (acks or '') .. '\n' .. dev
  if first and e.kind == 'm' then
    pending_delta = pending_delta - redis.call('ZREM', ch.unacked, s)
  end
  local devices = devices_of[ch.devices]
  if not devices then
    devices = redis.call('HKEYS', ch.devices)
    devices_of[ch.devices] = devices
  end
  local done = #devices > 0
  for _, d in ipairs(devices) do
    if not has_ack(now_acks, d) then
      done = false
      break
    end
  end
  if done then
    remove(ch, s, e, not first, false, list)
  else
    redis.call('HSET', ch.acks, s, now_acks)
    -- Out of `unacked`, a message waits for its other devices in `exp`.
    if first and e.kind == 'm' then
      redis.call('ZADD', ch.exp, string.format('%d', e.exp), s)
    end
  end
  return first
end

-- Acks, for `dev`, the oldest entry with id `id` that it has not acked and
-- that has not expired at `now` (a number). Returns the entry's seq, the
-- parsed entry and whether this was the first ack by any device; nil when
-- no entry matched (unknown ids are ignored). Shared by batch.lua (its ack) and
-- cluster_ack.lua, which differ only in where the receipt goes.
local function ack_oldest(ch, dev, id, now)
  local list = redis.call('HGET', ch.ids, id)
  if not list then return nil end
  for s in string.gmatch(list, '%d+') do
    local v = entry_at(ch, s)
    if v then
      local e = parse(v, s)
      local acks = redis.call('HGET', ch.acks, s)
      if e.exp > now and not has_ack(acks, dev) then
        return s, e, ack_seq(ch, s, e, dev, acks, list)
      end
    end
  end
  return nil
end

-- Drops up to `batch` entries with expires_at <= now (a string) from each
-- expiry index (`exp` and `unacked`). Returns how many were dropped and
-- whether `batch` were due in either (there may be more).
local function drop_expired(ch, now, batch)
  local dropped, more = 0, false
  for _, index in ipairs({ch.exp, ch.unacked}) do
    local due = redis.call('ZRANGE', index, '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
    for _, s in ipairs(due) do
      local v = entry_at(ch, s)
      if v then
        remove(ch, s, parse(v, s), true, true, nil)
        dropped = dropped + 1
      else
        redis.call('ZREM', index, s)
      end
    end
    more = more or #due >= batch
  end
  return dropped, more
end

-- The channel's earliest expiry (a string), '' when it holds no entry.
local function earliest_expiry(ch)
  local a = redis.call('ZRANGE', ch.exp, 0, 0, 'WITHSCORES')[2]
  local b = redis.call('ZRANGE', ch.unacked, 0, 0, 'WITHSCORES')[2]
  if a and b then
    if tonumber(b) < tonumber(a) then return b end
    return a
  end
  return a or b or ''
end

-- Cluster mode: the marker of a message in one destination's log is
-- "<dedupe_until> <seq> <attempt token>". It stands for the message while
-- its dedupe window lasts, and always for the attempt that wrote it.
-- Returns the seq (a string) when it stands, else nil.
local function marker_seq(m, now, token)
  if not m then return nil end
  local u, s, t = string.match(m, '^(%d+) (%d+) (.*)$')
  if not u then corrupt('marker') end
  if tonumber(u) > now or t == token then return s end
  return nil
end

-- Cluster mode: what counts against a channel's queue limit: the messages no
-- device acked and the live reservations of enqueues in progress (dropping
-- the stale ones). `now` is a string.
local function queued(unacked, resv, now)
  redis.call('ZREMRANGEBYSCORE', resv, '-inf', now)
  return redis.call('ZCOUNT', unacked, '(' .. now, '+inf') + redis.call('ZCARD', resv)
end

-- The keys of a channel passed as KEYS[i .. i + 7], in the order of
-- `channel_keys`.
local function keys_at(i, tag)
  return {
    tag = tag,
    seq = KEYS[i], log = KEYS[i + 1], exp = KEYS[i + 2], unacked = KEYS[i + 3],
    epoch = KEYS[i + 4], acks = KEYS[i + 5], ids = KEYS[i + 6], devices = KEYS[i + 7],
  }
end
