-- Shared by every script (prepended after the shebang line).
--
-- An entry is stored in the channel's `ent` hash under its seq as
--   "<kind> <expires_at> <sender_len> <id_len>\n" .. sender .. id .. payload
-- kind "m" is a data message (sender_len 0: sent by the system), "r" a
-- receipt (both lengths 0). Acks of an entry are in the channel's `acks` hash
-- under its seq as "\n" .. device for each device that acked, in ack order
-- (device names have no control characters; "" is the default device).
--
-- Times and seqs cross the boundary as decimal strings and are never turned
-- back into text by Lua (whose number formatting is not exact), except seqs
-- through string.format('%d').

-- Standalone Redis: the key of the count of retained payload bytes over all
-- channels (`bachata:retained`), set by each script that appends or removes
-- entries; nil in cluster mode, where the caller keeps the count (in shards
-- that no single-slot script can reach).
local retained_key = nil
-- Payload bytes this script removed (the cluster scripts return it).
local removed_bytes = 0

local function corrupt(what)
  error({err = 'BACHATA_CORRUPT ' .. what})
end

local function parse(v, seq)
  local kind, exp, slen, ilen, pos = string.match(v, '^(%a) (%d+) (%d+) (%d+)\n()')
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

-- Makes each existing key of the channel live at least `ms` more
-- milliseconds (a string; relative, so that the nodes' clocks and Redis's
-- need not agree): a channel's keys expire together, after its last entry
-- and a margin of `--forget-after` (protocol.md section 9: state follows
-- pending work). A key without expiry gets one.
local function keep_for(keys, ms)
  local d = tonumber(ms)
  for _, k in ipairs(keys) do
    local t = redis.call('PTTL', k)
    if t == -1 or (t >= 0 and t < d) then
      redis.call('PEXPIRE', k, ms)
    end
  end
end

local function keep_channel(ch, ms)
  keep_for({ch.seq, ch.log, ch.exp, ch.unacked, ch.ent, ch.acks, ch.ids, ch.devices}, ms)
end

-- A key created after the others (a channel's `acks`) expires with them.
local function expire_with(key, other)
  if redis.call('PTTL', key) == -1 then
    local t = redis.call('PTTL', other)
    if t > 0 then redis.call('PEXPIRE', key, t) end
  end
end

local function has_ack(acks, dev)
  return acks and string.find(acks .. '\n', '\n' .. dev .. '\n', 1, true) ~= nil
end

local function hex(s)
  return (string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end))
end

-- The keys of one channel, named as in the crate docs.
local function channel_keys(prefix, tag)
  local p = prefix .. '{' .. tag .. '}:'
  return {
    tag = tag,
    seq = p .. 'seq', log = p .. 'log', exp = p .. 'exp', unacked = p .. 'unacked',
    ent = p .. 'ent', acks = p .. 'acks', ids = p .. 'ids', devices = p .. 'devices',
  }
end

-- Appends an entry; returns its seq (a Lua number). `expiring` is the
-- global expiry index (standalone), nil in cluster mode (the caller indexes
-- the channel in its shard). The channel's keys then live at least `keep`
-- more milliseconds (see keep_for).
local function append(ch, expiring, kind, exp, sender, id, payload, keep)
  local seq = redis.call('INCR', ch.seq)
  local s = string.format('%d', seq)
  local value = kind .. ' ' .. exp .. ' ' .. #sender .. ' ' .. #id .. '\n' .. sender .. id .. payload
  redis.call('HSET', ch.ent, s, value)
  redis.call('ZADD', ch.log, s, s)
  redis.call('ZADD', ch.exp, exp, s)
  if kind == 'm' then
    redis.call('ZADD', ch.unacked, exp, s)
    local list = redis.call('HGET', ch.ids, id)
    if list then list = list .. ' ' .. s else list = s end
    redis.call('HSET', ch.ids, id, list)
  end
  -- The channel's earliest expiry, kept as a lower bound.
  if expiring then
    redis.call('ZADD', expiring, 'LT', exp, ch.tag)
  end
  if retained_key then
    redis.call('INCRBY', retained_key, #payload)
  end
  keep_channel(ch, keep)
  return seq
end

-- Removes an entry (parsed as `e`) and its index records.
local function remove(ch, s, e)
  removed_bytes = removed_bytes + e.size
  if retained_key then
    redis.call('DECRBY', retained_key, e.size)
  end
  redis.call('HDEL', ch.ent, s)
  redis.call('HDEL', ch.acks, s)
  redis.call('ZREM', ch.log, s)
  redis.call('ZREM', ch.exp, s)
  if e.kind == 'm' then
    redis.call('ZREM', ch.unacked, s)
    local list = redis.call('HGET', ch.ids, e.id)
    if list then
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
  end
end

-- Records `dev`'s ack of entry `s` (parsed as `e`), which it has not acked.
-- Removes the entry once every known device acked it. Returns true when this
-- was the first ack by any device.
local function ack_seq(ch, s, e, dev, acks)
  local first = not acks
  local now_acks = (acks or '') .. '\n' .. dev
  if first and e.kind == 'm' then
    redis.call('ZREM', ch.unacked, s)
  end
  local devices = redis.call('HKEYS', ch.devices)
  local done = #devices > 0
  for _, d in ipairs(devices) do
    if not has_ack(now_acks, d) then
      done = false
      break
    end
  end
  if done then
    remove(ch, s, e)
  else
    redis.call('HSET', ch.acks, s, now_acks)
    expire_with(ch.acks, ch.log)
  end
  return first
end

-- Acks, for `dev`, the oldest entry with id `id` that it has not acked and
-- that has not expired at `now` (a number). Returns the entry's seq, the
-- parsed entry and whether this was the first ack by any device; nil when
-- no entry matched (unknown ids are ignored). Shared by ack.lua and
-- cluster_ack.lua, which differ only in where the receipt goes.
local function ack_oldest(ch, dev, id, now)
  local list = redis.call('HGET', ch.ids, id)
  if not list then return nil end
  for s in string.gmatch(list, '%d+') do
    local v = redis.call('HGET', ch.ent, s)
    if v then
      local e = parse(v, s)
      local acks = redis.call('HGET', ch.acks, s)
      if e.exp > now and not has_ack(acks, dev) then
        return s, e, ack_seq(ch, s, e, dev, acks)
      end
    end
  end
  return nil
end

-- Drops up to `batch` entries with expires_at <= now (a string). Returns
-- how many were dropped and whether `batch` were due (there may be more).
local function drop_expired(ch, now, batch)
  local due = redis.call('ZRANGE', ch.exp, '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
  local dropped = 0
  for _, s in ipairs(due) do
    local v = redis.call('HGET', ch.ent, s)
    if v then
      remove(ch, s, parse(v, s))
      dropped = dropped + 1
    else
      redis.call('ZREM', ch.exp, s)
    end
  end
  return dropped, #due >= batch
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
    ent = KEYS[i + 4], acks = KEYS[i + 5], ids = KEYS[i + 6], devices = KEYS[i + 7],
  }
end
