//! Bachata's scale-out store on Redis 7 (standalone): any number of bachata
//! nodes share one Redis and so one delivery state.
//!
//! # How it works
//! Every operation of the [`Store`] trait is one Lua script (sent with
//! `EVALSHA` through [`redis::Script`], loaded again by itself after a Redis
//! restart) or one plain command, so each is atomic on the Redis server and
//! concurrent nodes never see half of an operation:
//!
//! - `enqueue` checks the dedupe record, then the queue limit of **every**
//!   destination, and only then appends to every destination's log and writes
//!   the dedupe record: a message is stored everywhere or nowhere.
//! - `ack` finds the oldest entry with the id that the device has not acked
//!   and that has not expired, records the ack, appends the receipt to the
//!   sender's log on the first ack by any device, and removes the entry once
//!   every known device of the channel acked it.
//! - `read` walks the log from `after` in seq order, skipping expired entries
//!   and the device's acked ones, up to `limit`.
//! - `expire` visits only the channels whose earliest expiry has passed (a
//!   global index) and drops their expired entries, one script per channel.
//!
//! The scripts apply exactly the rules of `bachata_core::memstate` (the
//! reference implementation); the conformance suite of `bachata-testkit`
//! checks both the same way. All times come in the requests (`now`,
//! `expires_at`, `dedupe_until`): no script reads the Redis server's clock.
//!
//! # Key schema
//! `<tag>` is the channel name as lowercase hex, so a channel's keys share one
//! hash tag (one Redis Cluster slot) whatever characters its name has (`{`,
//! `}` and `:` included), and no name can collide with another's keys.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `bachata:{<tag>}:seq` | string | last seq handed out (`INCR`); never deleted, so seqs never go back |
//! | `bachata:{<tag>}:log` | zset | seq → score seq: the retained entries in log order |
//! | `bachata:{<tag>}:ent` | hash | seq → entry: `"<kind> <expires_at> <sender_len> <id_len>\n"` sender id payload (binary-safe) |
//! | `bachata:{<tag>}:exp` | zset | seq → score expires_at, for `expire` |
//! | `bachata:{<tag>}:unacked` | zset | seq → score expires_at of the data messages no device acked: `pending_count` and the queue limit are one `ZCOUNT (now +inf` |
//! | `bachata:{<tag>}:acks` | hash | seq → `"\n" device` per device that acked it |
//! | `bachata:{<tag>}:ids` | hash | message id → its seqs in this log, space separated, ascending |
//! | `bachata:{<tag>}:devices` | hash | device (`""` = default device) → last seen ms |
//! | `bachata:g:{<hex group>}:members` | set | member channel names |
//! | `bachata:d:{<hex sender>}:<id>` | string | dedupe deadline (ms) of a sender's id, with a `PX` expiry |
//! | `bachata:d:{-<hex id>}:<id>` | string | the same for messages by the system (spread by id) |
//! | `bachata:expiring` | zset | channel tag → score ≤ its earliest `expires_at` (global) |
//!
//! Redis deletes a collection when its last element goes, so an idle channel
//! leaves only its `seq` key and its `devices` hash.
//!
//! The dedupe record's value is compared with the request's `now`; the `PX`
//! expiry (`dedupe_until - now` plus a grace of [`DEDUPE_GRACE_MS`]) only
//! frees memory, so `expire` does not sweep dedupe records.
//!
//! `bachata:expiring` is one global key, fine for standalone Redis. Its
//! score for a channel is a lower bound (acks remove entries without raising
//! it); `expire` visits the channels due, drops their expired entries and
//! sets the exact earliest expiry again, or removes the channel when its log
//! is empty.
//!
//! # Redis Cluster (later)
//! The keys are ready for it: each channel, group and sender lives on one
//! slot. The scripts are not: `enqueue` touches every destination and the
//! sender's dedupe record in one script, `ack` derives the receipt's sender
//! keys inside the script, and `expire` updates the global index from each
//! channel's script. Standalone Redis allows all of that; a cluster will need
//! per-slot scripts (e.g. reserve then commit per destination, with the
//! dedupe record as the commit point) and a sharded expiry index.
//!
//! # Memory per message (rough)
//! Per destination, a data message costs its payload plus the sender and id
//! (the entry value), one hash field, three sorted-set members (log, exp,
//! unacked) and its `ids` record. Measured on Redis 7.0 (`MEMORY USAGE`,
//! 100-byte payloads, 16-byte sender, 15-byte id):
//!
//! - small queues (up to 128 entries, kept as listpacks): about 160 bytes
//!   besides the payload;
//! - large queues (hash tables and skiplists): about 500–600 bytes besides
//!   the payload (10 000 pending 1 KB messages in one queue: about 18 MB,
//!   allocator rounding included);
//! - a channel holding any entry: about 0.7 KB for its keys; an idle one
//!   keeps its `seq` key (about 90 bytes) and its `devices` hash;
//! - a dedupe record: about 150 bytes, for the dedupe window (24 h by
//!   default) whether or not the message is still pending;
//! - the first ack adds an `acks` field (about 70 bytes) until every known
//!   device acked the entry and it is removed.
//!
//! # Durability
//! A 100 means "written to Redis": it is only as durable as Redis's
//! persistence. With `appendonly yes` and `appendfsync always`, every write
//! is on disk before Redis answers, so a 100 survives a Redis crash (at the
//! cost of an fsync per write, which Redis batches across clients). With
//! `appendfsync everysec` (Redis's default when AOF is on) a Redis crash or
//! power loss can lose the last second of 100s; with RDB snapshots only, the
//! writes since the last snapshot; with no persistence, everything. A
//! replica does not help on its own: replication is asynchronous (`WAIT` is
//! not used). Losing a bachata node loses nothing in any case.
//!
//! Run Redis with `maxmemory-policy noeviction` (its default): an evicting
//! policy would silently drop queued messages, seq counters (seqs would go
//! back) or dedupe records. At `maxmemory`, every writing script is refused
//! whole (`StoreError::Backend`, the client gets `unavailable`) and `read`
//! (a `no-writes` script) still works, so pending messages keep flowing out.
//!
//! A Lua script is atomic but not transactional: Redis does not undo the
//! writes of a script that fails halfway. Every script makes all its checks
//! before its first write, so that only happens on data that is already
//! broken (a key of the wrong type, a malformed entry: `Corrupt`).
//!
//! # Cross-node wake-ups
//! [`RedisBus`] (module [`bus`]) tells the other nodes over Redis pub/sub
//! that a channel got a new entry, so their live connections read it at
//! once. Pub/sub may lose messages; the log stays the truth (see the module).
//!
//! # Not here yet
//! `pending_total` is not computed (`None`).
//! Redis Cluster (see above). TLS (`rediss://`) needs the redis crate's
//! `tokio-rustls-comp` feature, not enabled yet.
//!
//! # Errors and outages
//! The connection is a [`ConnectionManager`], which reconnects by itself.
//! Each call is bounded by [`RedisStoreOptions::call_timeout`] and by the
//! connection and response timeouts: with Redis down, calls fail with
//! [`StoreError::Backend`] after at most that long and work again once Redis
//! is back. Malformed data read from Redis is [`StoreError::Corrupt`].

pub mod bus;
mod codec;
mod keys;

pub use bus::RedisBus;

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bachata_core::{
    AckRequest, AckState, Acked, Device, Enqueued, Entry, Millis, NewMessage, Seq, Store,
    StoreError,
};
use bachata_proto::{Channel, GroupId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, Value};

use keys::{ChannelKeys, EXPIRING, PREFIX};

/// Added to the dedupe record's `PX` expiry, so that nodes whose clocks run
/// a little behind Redis's still find the record for the whole window.
pub const DEDUPE_GRACE_MS: u64 = 10_000;

/// Channels `expire` fetches from the global index at a time.
const EXPIRE_CHANNELS: usize = 256;
/// Entries one `expire` script drops at most, so no script runs long.
const EXPIRE_BATCH: usize = 1000;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct RedisStoreOptions {
    /// Bound on one TCP connect (and handshake) attempt.
    pub connection_timeout: Duration,
    /// Bound on waiting for one reply.
    pub response_timeout: Duration,
    /// Reconnect attempts (exponential backoff from 100 ms, at most
    /// `max_reconnect_delay` apart) before a reconnect gives up; the next call
    /// starts a new one.
    pub reconnect_retries: usize,
    pub max_reconnect_delay: Duration,
    /// Bound on a whole store call, reconnecting included.
    pub call_timeout: Duration,
}

impl Default for RedisStoreOptions {
    fn default() -> Self {
        RedisStoreOptions {
            connection_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            reconnect_retries: 3,
            max_reconnect_delay: Duration::from_secs(1),
            call_timeout: Duration::from_secs(8),
        }
    }
}

/// Why [`RedisStore::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    #[error("invalid redis url: {0}")]
    Url(String),
    #[error("cannot connect to redis: {0}")]
    Connect(String),
    #[error("unsupported redis server: {0}")]
    Unsupported(String),
}

/// A script: the shebang (Redis 7 script flags), the shared helpers, then
/// the script's own file. A script without `no-writes` is refused whole when
/// Redis is over `maxmemory`, before it writes anything.
macro_rules! script {
    ($file:literal) => {
        script!("#!lua", $file)
    };
    ($shebang:literal, $file:literal) => {
        Script::new(concat!(
            $shebang,
            "\n",
            include_str!("lua/common.lua"),
            include_str!(concat!("lua/", $file))
        ))
    };
}

#[derive(Debug)]
struct Scripts {
    enqueue: Script,
    read: Script,
    ack: Script,
    ack_seqs: Script,
    expire: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            enqueue: script!("enqueue.lua"),
            read: script!("#!lua flags=no-writes", "read.lua"),
            ack: script!("ack.lua"),
            ack_seqs: script!("ack_seqs.lua"),
            expire: script!("expire.lua"),
        }
    }
}

/// The [`Store`] on Redis 7. See the crate docs. Cheap to share behind an
/// `Arc`; every call goes over one multiplexed connection.
#[derive(Debug)]
pub struct RedisStore {
    conn: ConnectionManager,
    scripts: Scripts,
    options: RedisStoreOptions,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`) with the
    /// default [`RedisStoreOptions`], and checks that the server is Redis 7
    /// or newer.
    pub async fn connect(url: &str) -> Result<RedisStore, RedisStoreError> {
        Self::connect_with(url, RedisStoreOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        options: RedisStoreOptions,
    ) -> Result<RedisStore, RedisStoreError> {
        let client = redis::Client::open(url).map_err(|e| RedisStoreError::Url(short(&e)))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connection_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(options.reconnect_retries)
            .set_max_delay(options.max_reconnect_delay);
        let connect = ConnectionManager::new_with_config(client, config);
        let conn = match tokio::time::timeout(options.call_timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(RedisStoreError::Connect(short(&e))),
            Err(_) => {
                return Err(RedisStoreError::Connect(format!(
                    "timed out after {:?}",
                    options.call_timeout
                )));
            }
        };
        let store = RedisStore {
            conn,
            scripts: Scripts::new(),
            options,
        };
        store.check_version().await?;
        Ok(store)
    }

    async fn check_version(&self) -> Result<(), RedisStoreError> {
        let mut conn = self.conn.clone();
        let info: String = self
            .call("INFO", async move {
                redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|e| RedisStoreError::Connect(e.to_string()))?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(str::trim)
            .unwrap_or("unknown");
        let major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
        match major {
            Some(m) if m >= 7 => Ok(()),
            _ => Err(RedisStoreError::Unsupported(format!(
                "redis_version {version}, need 7 or newer"
            ))),
        }
    }

    /// Runs one call against Redis within the call timeout, mapping errors.
    async fn call<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.options.call_timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(map_error(what, &e)),
            Err(_) => Err(StoreError::Backend(format!(
                "redis {what}: timed out after {:?}",
                self.options.call_timeout
            ))),
        }
    }

    /// Drops the expired entries of one channel (in batches); returns how
    /// many.
    async fn expire_channel(&self, tag: String, now: Millis) -> Result<u64, StoreError> {
        let keys = ChannelKeys::from_tag(tag);
        let mut dropped = 0u64;
        loop {
            let mut inv = self.scripts.expire.prepare_invoke();
            for key in keys.all() {
                inv.key(key);
            }
            inv.key(EXPIRING).arg(now).arg(&keys.tag).arg(EXPIRE_BATCH);
            let mut conn = self.conn.clone();
            let reply: Value = self
                .call("expire", async move { inv.invoke_async(&mut conn).await })
                .await?;
            let reply = codec::array(reply, "expire")?;
            let [n, more] = reply.as_slice() else {
                return Err(StoreError::Corrupt("redis expire: bad reply".into()));
            };
            dropped += u64::try_from(codec::int(n, "expire")?).unwrap_or(0);
            if codec::int(more, "expire")? == 0 {
                return Ok(dropped);
            }
        }
    }
}

/// A short, single-line description of a Redis error.
fn short(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string().replace(['\r', '\n'], " ");
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

fn map_error(what: &str, e: &RedisError) -> StoreError {
    let text = short(e);
    if text.contains("BACHATA_CORRUPT") {
        StoreError::Corrupt(format!("redis {what}: {text}"))
    } else {
        StoreError::Backend(format!("redis {what}: {text}"))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, StoreError> {
        let dests: Vec<ChannelKeys> = msg.destinations.iter().map(ChannelKeys::new).collect();
        let px = match msg.dedupe_until.saturating_sub(msg.now) {
            0 => 0,
            window => window.saturating_add(DEDUPE_GRACE_MS),
        };
        let mut inv = self.scripts.enqueue.prepare_invoke();
        inv.key(keys::dedupe(msg.sender.as_ref(), &msg.id))
            .key(EXPIRING);
        for dest in &dests {
            for key in dest.all() {
                inv.key(key);
            }
        }
        inv.arg(msg.now)
            .arg(msg.expires_at)
            .arg(msg.dedupe_until)
            .arg(px)
            .arg(msg.queue_limit)
            .arg(msg.sender.as_ref().map_or("", |s| s.as_str()))
            .arg(msg.id.as_str())
            .arg(msg.payload.as_ref());
        for dest in &dests {
            inv.arg(&dest.tag);
        }
        let mut conn = self.conn.clone();
        let reply: Value = self
            .call("enqueue", async move { inv.invoke_async(&mut conn).await })
            .await?;
        let mut reply = codec::array(reply, "enqueue")?.into_iter();
        let status = reply
            .next()
            .map(|v| codec::bytes(v, "enqueue"))
            .transpose()?;
        match status.as_deref() {
            Some(b"ok") => {
                let seqs = reply
                    .map(|v| codec::seq(&v, "enqueue"))
                    .collect::<Result<Vec<_>, _>>()?;
                if seqs.len() != msg.destinations.len() {
                    return Err(StoreError::Corrupt(
                        "redis enqueue: wrong number of seqs".into(),
                    ));
                }
                Ok(Enqueued::Stored(
                    msg.destinations.into_iter().zip(seqs).collect(),
                ))
            }
            Some(b"dup") => Ok(Enqueued::Duplicate),
            Some(b"full") => {
                let index = reply
                    .next()
                    .map(|v| codec::int(&v, "enqueue"))
                    .transpose()?
                    .and_then(|i| usize::try_from(i).ok())
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| msg.destinations.get(i).cloned());
                index
                    .map(Enqueued::QueueFull)
                    .ok_or_else(|| StoreError::Corrupt("redis enqueue: bad full index".into()))
            }
            _ => Err(StoreError::Corrupt("redis enqueue: bad reply".into())),
        }
    }

    async fn read(
        &self,
        channel: &Channel,
        device: &Device,
        after: Seq,
        limit: usize,
        now: Millis,
    ) -> Result<Vec<Entry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = ChannelKeys::new(channel);
        let mut inv = self.scripts.read.prepare_invoke();
        for key in keys.all() {
            inv.key(key);
        }
        inv.arg(after).arg(limit).arg(now).arg(keys::device(device));
        let mut conn = self.conn.clone();
        let reply: Value = self
            .call("read", async move { inv.invoke_async(&mut conn).await })
            .await?;
        let items = codec::array(reply, "read")?;
        if items.len() % 2 != 0 || items.len() / 2 > limit {
            return Err(StoreError::Corrupt("redis read: bad reply".into()));
        }
        let mut entries = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(seq), Some(raw)) = (items.next(), items.next()) {
            let seq = codec::seq(&seq, "read")?;
            entries.push(codec::entry(seq, codec::bytes(raw, "read")?)?);
        }
        Ok(entries)
    }

    async fn ack(&self, ack: AckRequest) -> Result<Acked, StoreError> {
        let keys = ChannelKeys::new(&ack.channel);
        let mut inv = self.scripts.ack.prepare_invoke();
        for key in keys.all() {
            inv.key(key);
        }
        inv.key(EXPIRING)
            .arg(keys::device(&ack.device))
            .arg(ack.id.as_str())
            .arg(ack.now)
            .arg(ack.receipt.as_ref())
            .arg(ack.receipt_expires_at)
            .arg(PREFIX);
        let mut conn = self.conn.clone();
        let reply: Value = self
            .call("ack", async move { inv.invoke_async(&mut conn).await })
            .await?;
        let reply = codec::array(reply, "ack")?;
        match reply.as_slice() {
            [found] if codec::int(found, "ack")? == 0 => Ok(Acked::default()),
            [_, seq] => Ok(Acked {
                seq: Some(codec::seq(seq, "ack")?),
                receipt: None,
            }),
            [_, seq, rseq, sender] => Ok(Acked {
                seq: Some(codec::seq(seq, "ack")?),
                receipt: Some((
                    codec::channel(sender.clone(), "ack sender")?,
                    codec::seq(rseq, "ack")?,
                )),
            }),
            _ => Err(StoreError::Corrupt("redis ack: bad reply".into())),
        }
    }

    async fn ack_seqs(
        &self,
        channel: &Channel,
        device: &Device,
        seqs: &[Seq],
    ) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let keys = ChannelKeys::new(channel);
        let mut inv = self.scripts.ack_seqs.prepare_invoke();
        for key in keys.all() {
            inv.key(key);
        }
        inv.arg(keys::device(device));
        for seq in seqs {
            inv.arg(*seq);
        }
        let mut conn = self.conn.clone();
        let _: Value = self
            .call("ack_seqs", async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    async fn touch_device(
        &self,
        channel: &Channel,
        device: &Device,
        now: Millis,
    ) -> Result<(), StoreError> {
        let key = ChannelKeys::new(channel).devices;
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key).arg(keys::device(device)).arg(now);
        let mut conn = self.conn.clone();
        let _: Value = self
            .call(
                "touch_device",
                async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        Ok(())
    }

    async fn health(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.call("ping", async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    async fn pending_count(&self, channel: &Channel, now: Millis) -> Result<u64, StoreError> {
        let key = ChannelKeys::new(channel).unacked;
        let mut cmd = redis::cmd("ZCOUNT");
        cmd.arg(key).arg(format!("({now}")).arg("+inf");
        let mut conn = self.conn.clone();
        let n: Value = self
            .call(
                "pending_count",
                async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        u64::try_from(codec::int(&n, "pending_count")?)
            .map_err(|_| StoreError::Corrupt("redis pending_count: negative".into()))
    }

    async fn ack_state(&self, channel: &Channel, seq: Seq) -> Result<AckState, StoreError> {
        let keys = ChannelKeys::new(channel);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HEXISTS")
            .arg(&keys.ent)
            .arg(seq)
            .cmd("HEXISTS")
            .arg(&keys.acks)
            .arg(seq);
        let mut conn = self.conn.clone();
        let (exists, acked): (bool, bool) = self
            .call(
                "ack_state",
                async move { pipe.query_async(&mut conn).await },
            )
            .await?;
        Ok(match (exists, acked) {
            (false, _) => AckState::Gone,
            (true, false) => AckState::Pending,
            (true, true) => AckState::Acked,
        })
    }

    async fn add_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(keys::members(group)).arg(member.as_str());
        let mut conn = self.conn.clone();
        let n: i64 = self
            .call(
                "add_member",
                async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        Ok(n > 0)
    }

    async fn remove_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SREM");
        cmd.arg(keys::members(group)).arg(member.as_str());
        let mut conn = self.conn.clone();
        let n: i64 = self
            .call(
                "remove_member",
                async move { cmd.query_async(&mut conn).await },
            )
            .await?;
        Ok(n > 0)
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<Channel>, StoreError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(keys::members(group));
        let mut conn = self.conn.clone();
        let reply: Value = self
            .call("members", async move { cmd.query_async(&mut conn).await })
            .await?;
        let mut members = codec::array(reply, "members")?
            .into_iter()
            .map(|v| codec::channel(v, "group member"))
            .collect::<Result<Vec<_>, _>>()?;
        members.sort();
        Ok(members)
    }

    async fn expire(&self, now: Millis) -> Result<u64, StoreError> {
        let mut dropped = 0;
        // A channel leaves the due range once visited (its score becomes its
        // next expiry, or it is removed); one re-added meanwhile with an
        // already expired entry is left to the next sweep.
        let mut visited = HashSet::new();
        loop {
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(EXPIRING)
                .arg("-inf")
                .arg(now)
                .arg("BYSCORE")
                .arg("LIMIT")
                .arg(0)
                .arg(EXPIRE_CHANNELS);
            let mut conn = self.conn.clone();
            let reply: Value = self
                .call("expire", async move { cmd.query_async(&mut conn).await })
                .await?;
            let mut fresh = Vec::new();
            for tag in codec::array(reply, "expire")? {
                let raw = codec::bytes(tag, "expire")?;
                let tag = String::from_utf8(raw)
                    .ok()
                    .filter(|t| !t.is_empty() && hex::decode(t).is_ok())
                    .ok_or_else(|| StoreError::Corrupt("redis expire: bad channel tag".into()))?;
                if visited.insert(tag.clone()) {
                    fresh.push(tag);
                }
            }
            if fresh.is_empty() {
                return Ok(dropped);
            }
            for tag in fresh {
                dropped += self.expire_channel(tag, now).await?;
            }
        }
    }
}
