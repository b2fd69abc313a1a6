//! Bachata's scale-out store on Redis 7, standalone or Redis Cluster: any
//! number of bachata nodes share one Redis (or one cluster) and so one
//! delivery state.
//!
//! [`RedisStore::connect`] takes `redis://host:port` for standalone Redis and
//! `redis+cluster://host:port[,host:port...]` (seed nodes) for Redis Cluster.
//! This section and the next describe standalone Redis; the cluster mode
//! keeps every rule but splits the operations that span channels into
//! single-slot steps: see [Redis Cluster](#redis-cluster).
//!
//! # How it works
//! Every operation of the [`Store`] trait is one Lua script (sent with
//! `EVALSHA` through [`redis::Script`], loaded again by itself after a Redis
//! restart) or one plain command, so each is atomic on the Redis server and
//! concurrent nodes never see half of an operation. Enqueues and acks go in
//! batches of many, one `lua/batch.lua` call each (see `writer.rs`):
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
//! checks both the same way. The times of the delivery rules come in the
//! requests (`now`, `expires_at`, `dedupe_until`); Redis's own clock
//! (`TIME`) only names epochs and dates the nodes' presence counts.
//!
//! # Key schema
//! `<tag>` is the channel name as lowercase hex, so a channel's keys share one
//! hash tag (one Redis Cluster slot) whatever characters its name has (`{`,
//! `}` and `:` included), and no name can collide with another's keys.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `bachata:{<tag>}:seq` | string | last seq handed out (`INCR`); expires with the channel (see [Forgetting](#forgetting)) |
//! | `bachata:{<tag>}:epoch` | string | this life of the counter: Redis's `TIME` when the counter was created (see [Epochs](#epochs)) |
//! | `bachata:{<tag>}:log` | zset | the retained entries, scored by seq; each member is the entry, `"<kind> <expires_at> <sender_len> <id_len> <seq>\n"` sender id payload (binary-safe) |
//! | `bachata:{<tag>}:exp` | zset | seq → score expires_at of the receipts and of the messages some device acked, for `expire` |
//! | `bachata:{<tag>}:unacked` | zset | seq → score expires_at of the data messages no device acked: `pending_count` and the queue limit are one `ZCOUNT (now +inf`; `expire` reads it beside `exp` (each entry is in one of the two, so a message acked at once by its only device never touches `exp`) |
//! | `bachata:{<tag>}:acks` | hash | seq → `"\n" device` per device that acked it |
//! | `bachata:{<tag>}:ids` | hash | message id → its seqs in this log, space separated, ascending |
//! | `bachata:{<tag>}:devices` | hash | device (`""` = default device) → last seen ms |
//! | `bachata:{<tag>}:online` | hash | node → `"<deadline ms>\n<n> <hex device>\n..."`: each node's live connections of the channel (see [`RedisPresence`]); expires with its last live field |
//! | `bachata:g:{<hex group>}:members` | set | member channel names |
//! | `bachata:d:{<hex sender>}:<id>` | string | dedupe deadline (ms) of a sender's id, with a `PX` expiry |
//! | `bachata:d:{-<hex id>}:<id>` | string | the same for messages by the system (spread by id) |
//! | `bachata:expiring` | zset | channel tag → score ≤ its earliest `expires_at` (global; standalone only) |
//! | `bachata:retained` | string | payload bytes of every retained entry (global; standalone only; see [Retained bytes](#retained-bytes)) |
//! | `bachata:pending` | string | messages no device acked, over all channels (global; standalone only; for the `bachata_pending_messages` gauge) |
//! | `bachata:undelivered` | zset | `"<tag> <seq>"` of message copies → when the undelivered webhook is due for them, or a claiming node's lease (global; see the `undelivered` module) |
//!
//! Redis Cluster mode adds (see [Redis Cluster](#redis-cluster)):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `bachata:expiring:{<n>}` | zset | replaces `bachata:expiring`: 16 shards, `n` = FNV-1a of the channel tag mod 16 |
//! | `bachata:retained:{<n>}` | string | replaces `bachata:retained`: 16 shards, `n` as for `expiring`, counted by the node |
//! | `bachata:undelivered:{<n>}` | zset | replaces `bachata:undelivered`: 16 shards, `n` as for `expiring`, written by the node |
//! | `bachata:{<tag>}:resv` | zset | attempt → deadline: queue room reserved by group enqueues in progress (lives seconds) |
//! | `bachata:{<tag>}:got:<hex sender or ->:<id>` | string | `"<dedupe_until> <seq> <attempt>"`: this message is in this log (for retries; 60 s once committed) |
//! | `bachata:{<sender tag>}:rcpt:<hex receiver>:<seq>` | string | the seq of the receipt for that entry (for retries; 60 s) |
//!
//! and its dedupe records hold `"<dedupe_until> <attempt>"`.
//!
//! Redis deletes a collection when its last element goes, so an idle channel
//! leaves only its `seq` and `epoch` keys and its `devices` hash, until they
//! expire.
//!
//! The entries live in the log itself (not in a hash beside it) because
//! every `redis.call` in a script costs about a microsecond of argument
//! conversion, command lookup and AOF propagation besides the command's
//! own work, and the hot paths (enqueue, ack, the receipt's ack) are counted
//! in such calls: one sorted set makes an append or a removal one call, and
//! a read one call for the entries. docs/performance.md has the profile.
//!
//! # Forgetting
//! protocol.md section 9: state follows pending work. Nothing is swept
//! ([`Store::forget`] does nothing here); keys carry lifetimes instead,
//! relative (`PEXPIRE`) so that no clock has to agree with Redis's:
//! - only the `seq`, `epoch` and `devices` keys have lifetimes: the other
//!   keys of a channel are collections, which Redis deletes with their last
//!   element, and every entry leaves by an ack or by `expire`;
//! - every append (`append` in `lua/common.lua`) makes the channel's `seq`
//!   and `epoch` live at least the entry's TTL plus `forget_after` (at
//!   least [`KEEP_MARGIN_MS`] more, so that `expire` removes the entry
//!   first), extending them a quarter beyond that, so that the appends that
//!   follow find them long enough with one `PTTL`;
//! - `touch_device` (`lua/touch.lua`) keeps the channel's `seq`, `epoch` and
//!   `devices` for at least `forget_after`, and drops the devices not seen
//!   for that long (the entries only they needed leave at their TTL).
//!
//! A channel's keys so expire once it had no entry and no touch for that
//! long; one that comes back starts a new epoch at seq 1 (no connection of
//! it existed, since connections touch their device now and then). Should
//! entries outlive their counter all the same, the new counter goes on
//! after the highest of them.
//!
//! # Epochs
//! protocol.md section 8: seqs can go back when Redis loses writes (a
//! restart without persistence, `appendfsync everysec`, a failover). When
//! a channel's counter is created (`INCR` answers 1), the script stores
//! Redis's `TIME` as the channel's epoch; [`Store::epoch`] reads it, and a
//! session that finds another epoch than the one it started with starts
//! over from the log's head. A counter that was not lost but went back (an
//! AOF missing its last second) keeps its epoch: the bus notices that Redis
//! restarted (its `run_id` changed) and every session of the node starts
//! over (see [`bus`]).
//!
//! # Retained bytes
//! `--max-retained-bytes` bounds the payload bytes of every retained entry
//! over all channels. On standalone Redis, `bachata:retained` counts them:
//! `append` adds, `remove` subtracts, and the enqueue of `batch.lua` refuses a message
//! whose copies would pass the limit (after the dedupe check and the queue
//! limits, before any write): exact and atomic. On a cluster no script can
//! reach a global key: the scripts report the bytes they appended or
//! removed, the node adds them to the channel's shard `bachata:retained:{n}`
//! and to its own view of the sum, which it reads again at most a second
//! old before an enqueue (see `retained.rs`). A node that dies
//! between a script and its count leaves the count off by that much.
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
//! # Redis Cluster
//! `redis+cluster://[user:password@]host:port[,host:port...]` names seed
//! nodes (the rest of the cluster is found from them); the connection is the
//! redis crate's cluster connection, which routes each command or script by
//! its keys' slot, follows `MOVED`/`ASK` and reconnects by itself. Redis
//! Cluster runs a script only when all its keys are on one slot, so every
//! script here touches one channel, or one sender, or one index shard.
//! Single-channel operations (`read`, `ack_seqs`, `touch_device`,
//! `pending_count`, `ack_state`, groups) are the same scripts and commands as
//! on standalone Redis. The others:
//!
//! **`enqueue`**, in steps, each atomic on its slot, the per-destination ones
//! concurrent:
//! 1. `GET` the sender's dedupe record: live → `Duplicate`. Meanwhile every
//!    destination goes into its expiry index shard (`ZADD LT`, first, so a
//!    crash after the append leaves nothing unindexed).
//! 2. With several destinations: in each, reserve room for this attempt
//!    (`resv`, counted with the unacked messages against the limit, lapsing
//!    after 60 s), or find the message there already (`have`, below). One
//!    `full` cancels the other reservations and answers `QueueFull`: nothing
//!    was appended.
//! 3. In each destination, append the message and write its marker (`got`),
//!    unless a marker says it is there already (then its seq is returned
//!    again). A single destination checks the queue limit here; with a
//!    reservation the append never refuses, so a group message is never
//!    stored half way for want of room.
//! 4. Write the dedupe record (the commit point; if another attempt's record
//!    is live by now, the answer is `Duplicate`), index the destinations
//!    again (see `expire`), and cut the markers' lives to 60 s.
//!
//! A crash (of the bachata node, or of the connection) between steps leaves
//! the message in some destinations and no dedupe record; the client got no
//! 100 and sends again, and the markers make that retry append nothing twice
//! and return the same seqs: the markers live for the whole dedupe window
//! until the commit. Each step can also run twice (the cluster connection
//! resends a command whose connection dropped) with the same outcome.
//!
//! **`ack`**: the ack script on the channel's slot records the ack (exactly
//! as standalone) and, on the first ack of a message with a sender, returns
//! the sender; a second script appends the receipt to the sender's log,
//! once per acked entry (its marker `rcpt` makes a retry return the same
//! seq; it is retried up to three times).
//!
//! **`expire`** visits the due channels of each of the 16 index shards. An
//! append cannot update the shard in its own script, so the index is kept
//! outside it: appends index before and after appending (`ZADD LT`), and
//! `expire`, after setting a channel's score (or removing it), re-reads the
//! channel's seq counter and indexes it again if an append ran meanwhile.
//!
//! **`health`** asks every master of the slot map for `CLUSTER INFO` and
//! wants `cluster_state:ok` from each.
//!
//! What is weaker than on standalone Redis:
//! - An enqueue is not atomic across destinations for readers: a device of
//!   one destination can read a group message before it is in the other
//!   destinations' logs.
//! - A crash between steps 3 and 4 leaves a message that got no 100 in some
//!   destinations; it is delivered there although the sender may never
//!   resend it (on standalone Redis it would be stored nowhere).
//! - The queue limit is exact for single destinations; for group messages,
//!   a reservation that outlives a crashed attempt holds a place for up to
//!   60 s, and clocks more than 60 s apart between nodes make reservations
//!   lapse early (the limit can then be passed by concurrent senders).
//! - Two concurrent sends of one message (same sender and id) store it once
//!   and answer one `Stored` and one `Duplicate`; but if they name different
//!   destinations, the loser's extra destinations keep it.
//! - A crash between the two steps of `ack` loses that 300 (the ack is
//!   recorded; a resent 200 matches nothing). A receipt is never appended
//!   twice. If the receipt cannot be appended within its three tries, `ack`
//!   still succeeds (the ack stands), without a receipt, and logs a warning.
//! - A crash between an append and the index update after it, with an
//!   `expire` sweep of that channel running in between, can leave the
//!   channel out of the index until its next append (its expired entries are
//!   invisible but take memory until then).
//! - Memory: a marker per destination while a send is in progress (and for
//!   the dedupe window after a crash before the commit); about 3 more round
//!   trips per enqueue (4 with several destinations), 3 more per first ack.
//! - Redis Cluster replicates asynchronously: a failover loses the writes
//!   the replica had not received, as on standalone Redis with a replica.
//!
//! The bus ([`RedisBus`]) on a cluster publishes through the cluster
//! connection and subscribes on one node (the seeds in turn on reconnect):
//! classic pub/sub reaches the subscribers of every node.
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
//! `pending_total` (the `bachata_pending_messages` gauge) is counted by the
//! scripts on standalone Redis (`bachata:pending`, read at each expiry
//! sweep); on a cluster it is not computed (`None`).
//! TLS (`rediss://`) needs the redis crate's `tokio-rustls-comp` feature, not
//! enabled yet.
//!
//! # Errors and outages
//! The connection is a [`ConnectionManager`](redis::aio::ConnectionManager) (standalone) or the redis
//! crate's cluster connection, both of which reconnect by themselves. Each
//! call is bounded by [`RedisStoreOptions::call_timeout`] and by the
//! connection and response timeouts: with Redis (or the master of a slot)
//! down, calls fail with [`StoreError::Backend`] after at most that long and
//! work again once it is back. Malformed data read from Redis is
//! [`StoreError::Corrupt`].

pub mod bus;
mod codec;
mod conn;
mod keys;
mod lifetimes;
mod presence;
mod retained;

pub use bus::RedisBus;
pub use conn::{CLUSTER_SCHEME, RedisStoreError, RedisStoreOptions};
pub use lifetimes::{DEDUPE_GRACE_MS, KEEP_MARGIN_MS};
pub use presence::RedisPresence;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bachata_core::{
    AckRequest, AckState, Acked, Device, Enqueued, Entry, Epoch, Forgotten, Millis, NewMessage,
    PendingAck, PendingEnqueue, Seq, Store, StoreError, Undelivered,
};
use bachata_proto::{Channel, GroupId, MessageId};
use redis::{FromRedisValue, RedisError, Value};

use conn::{Conn, connect_conn, node_id};
use keys::{ChannelKeys, EXPIRING, PENDING, RETAINED};
use lifetimes::{EXPIRE_BATCH, EXPIRE_CHANNELS};
use retained::RetainedView;

mod cluster;
mod scripts;
mod undelivered;
mod writer;

use scripts::Scripts;
use writer::{Op, Writer};

/// The [`Store`] on Redis 7, standalone or Redis Cluster. See the crate
/// docs. Cheap to share behind an `Arc`; every call goes over one
/// multiplexed connection (per cluster node).
#[derive(Debug)]
pub struct RedisStore {
    conn: Conn,
    scripts: Arc<Scripts>,
    /// Standalone Redis: the ordered, batched path of enqueues and acks.
    writer: Option<Writer>,
    options: RedisStoreOptions,
    /// Names this store's enqueue attempts (cluster mode), with `attempts`.
    node: String,
    attempts: AtomicU64,
    /// The retained bytes count as last read (for metrics; in cluster mode
    /// also for the limit, see [`RetainedView`]).
    retained: RetainedView,
    /// Standalone Redis: the pending messages count as last read (at each
    /// expiry sweep), for metrics.
    pending: std::sync::atomic::AtomicU64,
}

impl RedisStore {
    /// Connects to `url` with the default [`RedisStoreOptions`], and checks
    /// that the server (every master of a cluster) is Redis 7 or newer.
    ///
    /// - `redis://[user:password@]host:port[/db]`: standalone Redis;
    /// - `redis+cluster://[user:password@]host:port[,host:port...]`: Redis
    ///   Cluster, given by one or more seed nodes (the rest of the cluster is
    ///   discovered from them); see "Redis Cluster" in the crate docs.
    pub async fn connect(url: &str) -> Result<RedisStore, RedisStoreError> {
        Self::connect_with(url, RedisStoreOptions::default()).await
    }

    pub async fn connect_with(
        url: &str,
        options: RedisStoreOptions,
    ) -> Result<RedisStore, RedisStoreError> {
        let conn = connect_conn(url, &options).await?;
        let scripts = Arc::new(Scripts::new());
        let writer = if conn.is_cluster() {
            None
        } else {
            // A connection of its own: `WAIT` blocks the connection it is
            // sent on, and must not hold up the reads of every session.
            let own = connect_conn(url, &options).await?;
            Some(Writer::start(own, scripts.clone(), &options))
        };
        let store = RedisStore {
            conn,
            scripts,
            writer,
            options,
            node: node_id(),
            attempts: AtomicU64::new(0),
            retained: RetainedView::default(),
            pending: std::sync::atomic::AtomicU64::new(0),
        };
        store.check_version().await?;
        Ok(store)
    }

    /// Whether this store is on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    async fn check_version(&self) -> Result<(), RedisStoreError> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        // On a cluster, INFO goes to every master: one reply per node.
        let info: Value = self
            .query("INFO", cmd)
            .await
            .map_err(|e| RedisStoreError::Connect(e.to_string()))?;
        let texts = info_texts(info);
        if texts.is_empty() {
            return Err(RedisStoreError::Unsupported("no INFO reply".into()));
        }
        for info in texts {
            let version = info
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .map(str::trim)
                .unwrap_or("unknown");
            let major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
            if !matches!(major, Some(m) if m >= 7) {
                return Err(RedisStoreError::Unsupported(format!(
                    "redis_version {version}, need 7 or newer"
                )));
            }
        }
        Ok(())
    }

    /// A name for one enqueue attempt, unique across nodes and time.
    fn attempt_token(&self) -> String {
        let n = self.attempts.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n:x}", self.node)
    }

    /// Runs one call against Redis within the call timeout, mapping errors.
    async fn call<T>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        codec::bounded(what, self.options.call_timeout, fut).await
    }

    /// Runs one command (see [`RedisStore::call`]).
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        what: &'static str,
        cmd: redis::Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.call(what, cmd.query_async(&mut conn)).await
    }

    /// Runs one pipeline (see [`RedisStore::call`]).
    pub(crate) async fn query_pipe<T: FromRedisValue>(
        &self,
        what: &'static str,
        pipe: redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.call(what, pipe.query_async(&mut conn)).await
    }

    /// Runs one script (see [`RedisStore::call`]).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        what: &'static str,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.call(what, invocation.invoke_async(&mut conn)).await
    }

    /// The next batch of channels due for expiry in the index `index` that
    /// this sweep has not visited yet (empty when none are left).
    async fn due_channels(
        &self,
        index: &str,
        now: Millis,
        visited: &mut HashSet<String>,
    ) -> Result<Vec<String>, StoreError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(index)
            .arg("-inf")
            .arg(now)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(EXPIRE_CHANNELS);
        let reply: Value = self.query("expire", cmd).await?;
        let mut fresh = Vec::new();
        for tag in codec::array(reply, "expire")? {
            let tag = due_tag(tag)?;
            if visited.insert(tag.clone()) {
                fresh.push(tag);
            }
        }
        Ok(fresh)
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
            inv.key(EXPIRING)
                .key(RETAINED)
                .key(PENDING)
                .arg(now)
                .arg(&keys.tag)
                .arg(EXPIRE_BATCH);
            let reply: Value = self.invoke("expire", inv).await?;
            let reply = codec::array(reply, "expire")?;
            let [n, more] = reply.as_slice() else {
                return Err(StoreError::corrupt("redis expire: bad reply"));
            };
            dropped += u64::try_from(codec::int(n, "expire")?).unwrap_or(0);
            if codec::int(more, "expire")? == 0 {
                return Ok(dropped);
            }
        }
    }
}

/// The text of an `INFO` reply: one per node on a cluster.
fn info_texts(value: Value) -> Vec<String> {
    match value {
        Value::BulkString(b) => vec![String::from_utf8_lossy(&b).into_owned()],
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => vec![text],
        Value::Map(pairs) => pairs.into_iter().flat_map(|(_, v)| info_texts(v)).collect(),
        _ => Vec::new(),
    }
}

/// A channel tag read from the expiry index.
fn due_tag(value: Value) -> Result<String, StoreError> {
    let raw = codec::bytes(value, "expire")?;
    String::from_utf8(raw)
        .ok()
        .filter(|t| !t.is_empty() && hex::decode(t).is_ok())
        .ok_or_else(|| StoreError::corrupt("redis expire: bad channel tag"))
}

#[async_trait]
impl Store for RedisStore {
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued, StoreError> {
        match self.start_enqueue(msg) {
            Ok(pending) => pending.await,
            Err(msg) => {
                let notify_at = msg.notify_at;
                let outcome = self.enqueue_cluster(msg).await?;
                if let (Enqueued::Stored(stored), Some(at)) = (&outcome, notify_at)
                    && let Err(e) = self.index_undelivered(stored, at).await
                {
                    // Stored all the same: only the webhook's call is lost.
                    tracing::warn!(
                        error = %e,
                        "enqueue: cannot put the message in the undelivered index; \
                         the undelivered webhook will not be called for it"
                    );
                }
                Ok(outcome)
            }
        }
    }

    /// Standalone Redis: the ordered, batched path (`writer.rs`). A cluster
    /// enqueue is several steps on several slots, awaited one message at a
    /// time.
    fn start_enqueue(&self, msg: NewMessage) -> Result<PendingEnqueue, NewMessage> {
        match &self.writer {
            Some(writer) => Ok(writer.request(|tx| Op::Enqueue(msg, tx))),
            None => Err(msg),
        }
    }

    fn start_ack(&self, ack: AckRequest) -> Result<PendingAck, AckRequest> {
        match &self.writer {
            Some(writer) => Ok(writer.request(|tx| Op::Ack(ack, tx))),
            None => Err(ack),
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
        let reply: Value = self.invoke("read", inv).await?;
        let items = codec::array(reply, "read")?;
        if items.len() % 2 != 0 || items.len() / 2 > limit {
            return Err(StoreError::corrupt("redis read: bad reply"));
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
        match self.start_ack(ack) {
            Ok(pending) => pending.await,
            Err(ack) => self.ack_cluster(ack).await,
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
        if !self.is_cluster() {
            inv.key(RETAINED).key(PENDING);
        }
        inv.arg(keys::device(device));
        for seq in seqs {
            inv.arg(*seq);
        }
        let removed: Value = self.invoke("ack_seqs", inv).await?;
        if self.is_cluster() {
            let removed = codec::int(&removed, "ack_seqs")?;
            self.count_retained(&keys.tag, -removed).await;
        }
        Ok(())
    }

    async fn touch_device(
        &self,
        channel: &Channel,
        device: &Device,
        now: Millis,
        forget_after: Millis,
    ) -> Result<(), StoreError> {
        let keys = ChannelKeys::new(channel);
        let mut inv = self.scripts.touch.prepare_invoke();
        for key in keys.all() {
            inv.key(key);
        }
        inv.arg(keys::device(device))
            .arg(now)
            .arg(now.saturating_sub(forget_after))
            .arg(forget_after.max(1));
        let _: Value = self.invoke("touch_device", inv).await?;
        Ok(())
    }

    /// Nothing to sweep: a channel's keys expire by themselves once it has
    /// no entry left and was not touched for `forget_after` (the lifetimes
    /// that `append` and `touch` give them), and a device not seen for that
    /// long is dropped at the next touch of its channel. See "Forgetting"
    /// in the crate docs.
    async fn forget(&self, _now: Millis, _forget_after: Millis) -> Result<Forgotten, StoreError> {
        Ok(Forgotten::default())
    }

    fn retained_bytes(&self) -> Option<u64> {
        Some(self.retained.get())
    }

    fn pending_total(&self) -> Option<u64> {
        (!self.is_cluster()).then(|| self.pending.load(Ordering::Relaxed))
    }

    async fn epoch(&self, channel: &Channel) -> Result<Option<Epoch>, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(ChannelKeys::new(channel).epoch);
        let epoch: Option<String> = self.query("epoch", cmd).await?;
        epoch
            .map(|e| {
                e.parse()
                    .map_err(|_| StoreError::corrupt("redis epoch: not a number"))
            })
            .transpose()
    }

    async fn health(&self) -> Result<(), StoreError> {
        if let Some(cluster) = self.conn.cluster() {
            return self.health_cluster(cluster).await;
        }
        // The first command on a connection Redis dropped fails while it
        // reconnects: one pause and a second ping tell a reconnect from an
        // outage.
        let first = self.query::<String>("ping", redis::cmd("PING")).await;
        if first.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        self.query::<String>("ping", redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    async fn pending_count(&self, channel: &Channel, now: Millis) -> Result<u64, StoreError> {
        let key = ChannelKeys::new(channel).unacked;
        let mut cmd = redis::cmd("ZCOUNT");
        cmd.arg(key).arg(format!("({now}")).arg("+inf");
        let n: Value = self.query("pending_count", cmd).await?;
        u64::try_from(codec::int(&n, "pending_count")?)
            .map_err(|_| StoreError::corrupt("redis pending_count: negative"))
    }

    /// The dedupe record holds its deadline first (`"<until>"` on
    /// standalone Redis, `"<until> <attempt>"` on a cluster).
    async fn is_duplicate(
        &self,
        sender: Option<&Channel>,
        id: &MessageId,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(keys::dedupe(sender, id));
        let record: Option<String> = self.query("is_duplicate", cmd).await?;
        let Some(record) = record else {
            return Ok(false);
        };
        let until: Millis = record
            .split(' ')
            .next()
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| StoreError::corrupt("redis dedupe record: not a deadline"))?;
        Ok(until > now)
    }

    async fn ack_state(&self, channel: &Channel, seq: Seq) -> Result<AckState, StoreError> {
        let keys = ChannelKeys::new(channel);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("ZCOUNT")
            .arg(&keys.log)
            .arg(seq)
            .arg(seq)
            .cmd("HEXISTS")
            .arg(&keys.acks)
            .arg(seq);
        let (exists, acked): (bool, bool) = self.query_pipe("ack_state", pipe).await?;
        Ok(match (exists, acked) {
            (false, _) => AckState::Gone,
            (true, false) => AckState::Pending,
            (true, true) => AckState::Acked,
        })
    }

    async fn take_undelivered(
        &self,
        now: Millis,
        lease_until: Millis,
        limit: usize,
    ) -> Result<Vec<Undelivered>, StoreError> {
        self.take_undelivered_redis(now, lease_until, limit).await
    }

    async fn finish_undelivered(&self, done: &[(Channel, Seq)]) -> Result<(), StoreError> {
        self.finish_undelivered_redis(done).await
    }

    async fn add_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(keys::members(group)).arg(member.as_str());
        let n: i64 = self.query("add_member", cmd).await?;
        Ok(n > 0)
    }

    async fn remove_member(&self, group: &GroupId, member: &Channel) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SREM");
        cmd.arg(keys::members(group)).arg(member.as_str());
        let n: i64 = self.query("remove_member", cmd).await?;
        Ok(n > 0)
    }

    async fn members(&self, group: &GroupId) -> Result<Vec<Channel>, StoreError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(keys::members(group));
        let reply: Value = self.query("members", cmd).await?;
        let mut members = codec::array(reply, "members")?
            .into_iter()
            .map(|v| codec::channel(v, "group member"))
            .collect::<Result<Vec<_>, _>>()?;
        members.sort();
        Ok(members)
    }

    async fn expire(&self, now: Millis) -> Result<u64, StoreError> {
        if self.is_cluster() {
            let dropped = self.expire_cluster(now).await?;
            self.refresh_retained().await?;
            return Ok(dropped);
        }
        let dropped = self.expire_standalone(now).await?;
        self.refresh_retained().await?;
        Ok(dropped)
    }
}

impl RedisStore {
    async fn expire_standalone(&self, now: Millis) -> Result<u64, StoreError> {
        let mut dropped = 0;
        // A channel leaves the due range once visited (its score becomes its
        // next expiry, or it is removed); one re-added meanwhile with an
        // already expired entry is left to the next sweep.
        let mut visited = HashSet::new();
        loop {
            let fresh = self.due_channels(EXPIRING, now, &mut visited).await?;
            if fresh.is_empty() {
                return Ok(dropped);
            }
            for tag in fresh {
                dropped += self.expire_channel(tag, now).await?;
            }
        }
    }
}
