//! Redis Cluster mode: the operations whose keys span slots (`enqueue`,
//! `ack` with a receipt, `expire`) as a sequence of single-slot scripts and
//! commands. See "Redis Cluster" in the crate docs for the design and what
//! it guarantees; every other operation touches one channel (one slot) and
//! runs the same script or command in both modes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use bachata_core::{AckRequest, Acked, Enqueued, Millis, NewMessage, Seq, StoreError};
use bachata_proto::Channel;
use futures_util::future::{join, join_all, try_join, try_join_all};
use redis::Value;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use crate::RedisStore;
use crate::codec;
use crate::keys::{self, ChannelKeys};
use crate::lifetimes::{EXPIRE_BATCH, dedupe_px, keep_for};

/// How long a reservation of queue room lasts (from the request's `now`),
/// and the least time the marker of an appended message or receipt lives:
/// an attempt that takes longer may lose its reservation (the append then
/// goes ahead anyway) and its re-sent commands their idempotence.
pub(crate) const ATTEMPT_MS: u64 = 60_000;

/// Tries at appending a receipt (step 2 of `ack`) before it is given up.
const RECEIPT_TRIES: u32 = 3;

/// A status string in a script's reply.
fn status(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Whether a dedupe record (`"<dedupe_until>[ <attempt>]"`) is live at `now`.
fn record_live(record: &[u8], now: Millis) -> Result<bool, StoreError> {
    std::str::from_utf8(record)
        .ok()
        .and_then(|r| r.split(' ').next())
        .and_then(|u| u.parse::<Millis>().ok())
        .map(|until| until > now)
        .ok_or_else(|| StoreError::corrupt("redis enqueue: bad dedupe record"))
}

fn wall_clock_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One enqueue attempt on a cluster: the message, its keys, and the token
/// that names the attempt in reservations and markers.
struct Attempt<'m> {
    msg: &'m NewMessage,
    dests: Vec<ChannelKeys>,
    /// The sender's dedupe record.
    record: Vec<u8>,
    /// The message's marker in each destination.
    markers: Vec<Vec<u8>>,
    token: String,
    /// The dedupe record's `PX` (0: the message opens no window).
    px: u64,
}

impl<'m> Attempt<'m> {
    fn new(msg: &'m NewMessage, token: String) -> Self {
        let dests: Vec<ChannelKeys> = msg.destinations.iter().map(ChannelKeys::new).collect();
        Attempt {
            record: keys::dedupe(msg.sender.as_ref(), &msg.id),
            markers: dests
                .iter()
                .map(|d| keys::got(d, msg.sender.as_ref(), &msg.id))
                .collect(),
            px: dedupe_px(msg),
            dests,
            token,
            msg,
        }
    }

    fn tags(&self) -> Vec<&str> {
        self.dests.iter().map(|d| d.tag.as_str()).collect()
    }

    /// With several destinations, room is reserved in each first.
    fn reserved(&self) -> bool {
        self.dests.len() > 1
    }
}

impl RedisStore {
    /// Reads the retained bytes count again: the one key on standalone
    /// Redis, the sum of its shards on a cluster.
    pub(crate) async fn refresh_retained(&self) -> Result<(), StoreError> {
        let keys: Vec<String> = if self.is_cluster() {
            keys::retained_shards().collect()
        } else {
            vec![keys::RETAINED.to_owned()]
        };
        let counts = try_join_all(keys.into_iter().map(|key| {
            let mut cmd = redis::cmd("GET");
            cmd.arg(key);
            self.query::<Option<i64>>("retained", cmd)
        }))
        .await?;
        self.retained
            .set(counts.into_iter().flatten().sum(), wall_clock_ms());
        if !self.is_cluster() {
            let mut cmd = redis::cmd("GET");
            cmd.arg(keys::PENDING);
            let pending = self.query::<Option<i64>>("pending", cmd).await?;
            let pending = u64::try_from(pending.unwrap_or(0)).unwrap_or(0);
            self.pending
                .store(pending, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Cluster mode: adds what a script appended (or, negative, removed) to
    /// the shard of `tag`'s channel and to this node's view. Not atomic with
    /// the script: a node that dies in between leaves the count off by that
    /// much (see "Retained bytes" in the crate docs).
    pub(crate) async fn count_retained(&self, tag: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        self.retained.add(delta);
        let mut cmd = redis::cmd("INCRBY");
        cmd.arg(keys::retained_shard(tag)).arg(delta);
        let counted = self.query::<Value>("retained", cmd).await;
        if let Err(e) = counted {
            tracing::warn!(error = %e, delta, "cannot count retained bytes");
        }
    }

    /// `enqueue` on a cluster, in four steps, each on one slot (steps 2 and
    /// 3 once per destination, concurrently):
    ///
    /// 1. the dedupe record (sender's slot); meanwhile every destination goes
    ///    into its expiry index shard ([`RedisStore::is_duplicate`]);
    /// 2. with several destinations, a reservation of queue room in each (or
    ///    `have`: the message is there already); one refusal cancels them all
    ///    and answers `QueueFull` ([`RedisStore::reserve`]);
    /// 3. the append to each destination, unless its marker says that this
    ///    message is there already (then its seq is returned again)
    ///    ([`RedisStore::append_all`]);
    /// 4. the dedupe record (the commit point); meanwhile the destinations
    ///    go into their index shards again (see `expire_channel_cluster`);
    ///    then the markers' lives are cut to [`ATTEMPT_MS`]
    ///    ([`RedisStore::commit`]).
    ///
    /// The retained bytes limit is checked after the queue limits, as on
    /// standalone Redis: after the reservations, or in the append of a
    /// single destination.
    pub(crate) async fn enqueue_cluster(&self, msg: NewMessage) -> Result<Enqueued, StoreError> {
        let attempt = Attempt::new(&msg, self.attempt_token());
        if self.is_duplicate(&attempt).await? {
            return Ok(Enqueued::Duplicate);
        }
        let over = self.over_retained(&attempt).await?;
        if attempt.reserved()
            && let Some(refused) = self.reserve(&attempt, over).await?
        {
            return Ok(refused);
        }
        let seqs = match self.append_all(&attempt, over).await? {
            Ok(seqs) => seqs,
            Err(refused) => return Ok(refused),
        };
        if !self.commit(&attempt).await? {
            // A concurrent send of the same message committed first; the
            // markers made this one reuse its entries.
            return Ok(Enqueued::Duplicate);
        }
        Ok(Enqueued::Stored(
            msg.destinations.into_iter().zip(seqs).collect(),
        ))
    }

    /// Step 1: whether a live dedupe record says the message was stored
    /// (even a message that opens no window of its own is a duplicate
    /// within an earlier one's); indexes the destinations first, so that a
    /// crash after the append leaves no entry out of the index.
    async fn is_duplicate(&self, attempt: &Attempt<'_>) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&attempt.record);
        let check = self.query::<Option<Vec<u8>>>("enqueue", cmd);
        let (found, ()) =
            try_join(check, self.index(&attempt.tags(), attempt.msg.expires_at)).await?;
        match found {
            Some(found) => record_live(&found, attempt.msg.now),
            None => Ok(false),
        }
    }

    /// Whether the message would take the retained bytes past the limit, by
    /// this node's view (at most a second old, plus its own appends since).
    async fn over_retained(&self, attempt: &Attempt<'_>) -> Result<bool, StoreError> {
        if self.retained.stale(wall_clock_ms()) {
            self.refresh_retained().await?;
        }
        let msg = attempt.msg;
        let adding = (msg.payload.len() as u64).saturating_mul(attempt.dests.len() as u64);
        Ok(self.retained.get().saturating_add(adding) > msg.retained_limit)
    }

    /// Step 2: reserves room in every destination before appending to any;
    /// returns the refusal when a destination is full (or the message is
    /// `over` the retained bytes limit), after releasing the reservations.
    async fn reserve(
        &self,
        attempt: &Attempt<'_>,
        over: bool,
    ) -> Result<Option<Enqueued>, StoreError> {
        let msg = attempt.msg;
        let deadline = msg.now.saturating_add(ATTEMPT_MS);
        let replies = try_join_all(attempt.dests.iter().zip(&attempt.markers).map(
            |(dest, marker)| {
                let mut inv = self.scripts.cluster.reserve.prepare_invoke();
                inv.key(&dest.unacked)
                    .key(&dest.resv)
                    .key(marker.as_slice())
                    .arg(msg.now)
                    .arg(msg.queue_limit)
                    .arg(&attempt.token)
                    .arg(deadline);
                self.invoke::<String>("enqueue", inv)
            },
        ))
        .await?;
        if let Some(bad) = replies
            .iter()
            .find(|r| !matches!(r.as_str(), "ok" | "have" | "full"))
        {
            return Err(StoreError::corrupt(format!(
                "redis enqueue: bad reservation reply {bad:?}"
            )));
        }
        let full = replies.iter().position(|r| r == "full");
        if full.is_none() && !over {
            return Ok(None);
        }
        // Best effort: a reservation left behind lapses by itself.
        let releases = attempt
            .dests
            .iter()
            .zip(&replies)
            .filter(|(_, r)| *r == "ok")
            .map(|(dest, _)| {
                let mut cmd = redis::cmd("ZREM");
                cmd.arg(&dest.resv).arg(&attempt.token);
                self.query::<Value>("enqueue", cmd)
            });
        join_all(releases).await;
        Ok(Some(match full {
            Some(full) => Enqueued::QueueFull(msg.destinations[full].clone()),
            None => Enqueued::StoreFull,
        }))
    }

    /// Step 3: appends to every destination (idempotent: the marker names
    /// this attempt and, for the dedupe window, the message); returns the
    /// seqs, or the refusal of a single destination's append.
    async fn append_all(
        &self,
        attempt: &Attempt<'_>,
        over: bool,
    ) -> Result<Result<Vec<Seq>, Enqueued>, StoreError> {
        let msg = attempt.msg;
        let reserved = attempt.reserved();
        let marker_px = attempt.px.max(ATTEMPT_MS);
        let sender = msg.sender.as_ref().map_or("", |s| s.as_str());
        let replies = try_join_all(attempt.dests.iter().zip(&attempt.markers).map(
            |(dest, marker)| {
                let mut inv = self.scripts.cluster.append.prepare_invoke();
                for key in dest.all() {
                    inv.key(key);
                }
                inv.key(&dest.resv)
                    .key(marker.as_slice())
                    .arg(msg.now)
                    .arg(msg.expires_at)
                    .arg(msg.dedupe_until)
                    .arg(marker_px)
                    .arg(if reserved { "1" } else { "0" })
                    .arg(msg.queue_limit)
                    .arg(&attempt.token)
                    .arg(sender)
                    .arg(msg.id.as_str())
                    .arg(msg.payload.as_ref())
                    .arg(keep_for(msg.now, msg.expires_at, msg.forget_after))
                    .arg(if over && !reserved { "1" } else { "0" });
                self.invoke::<Value>("enqueue", inv)
            },
        ))
        .await?;
        let mut seqs = Vec::with_capacity(replies.len());
        for (i, reply) in replies.into_iter().enumerate() {
            let reply = codec::array(reply, "enqueue")?;
            match reply.as_slice() {
                [ok, seq, added] if status(ok) == Some(b"ok") => {
                    seqs.push(codec::seq(seq, "enqueue")?);
                    self.count_retained(&attempt.dests[i].tag, codec::int(added, "enqueue")?)
                        .await;
                }
                // Only without a reservation: a single destination.
                [full] if !reserved && status(full) == Some(b"full") => {
                    return Ok(Err(Enqueued::QueueFull(msg.destinations[i].clone())));
                }
                [full] if !reserved && status(full) == Some(b"store_full") => {
                    return Ok(Err(Enqueued::StoreFull));
                }
                _ => {
                    return Err(StoreError::corrupt("redis enqueue: bad append reply"));
                }
            }
        }
        Ok(Ok(seqs))
    }

    /// Step 4: writes the dedupe record (the commit point; false when a
    /// concurrent send of the same message committed first), indexes the
    /// destinations again, and cuts the markers' lives short.
    async fn commit(&self, attempt: &Attempt<'_>) -> Result<bool, StoreError> {
        let msg = attempt.msg;
        let record = async {
            if attempt.px == 0 {
                return Ok(true);
            }
            let mut inv = self.scripts.cluster.commit.prepare_invoke();
            inv.key(&attempt.record)
                .arg(msg.now)
                .arg(msg.dedupe_until)
                .arg(attempt.px)
                .arg(&attempt.token);
            let reply: String = self.invoke("enqueue", inv).await?;
            match reply.as_str() {
                "ok" => Ok(true),
                "dup" => Ok(false),
                _ => Err(StoreError::corrupt("redis enqueue: bad commit reply")),
            }
        };
        let (committed, indexed) = join(record, self.index(&attempt.tags(), msg.expires_at)).await;
        if let Err(e) = indexed {
            // The index already has the channels from step 1 (unless an
            // expire sweep raced with this enqueue and a crash follows).
            tracing::warn!(error = %e, "enqueue: cannot index the destinations again");
        }
        if !committed? {
            return Ok(false);
        }
        if attempt.px > 0 {
            // From now on the dedupe record answers resends; the markers
            // only have to outlast sends of this message already in
            // progress. Best effort: a marker left as it is lapses with
            // the window.
            let shorten = attempt.markers.iter().map(|marker| {
                let mut cmd = redis::cmd("PEXPIRE");
                cmd.arg(marker.as_slice()).arg(ATTEMPT_MS);
                self.query::<Value>("enqueue", cmd)
            });
            if let Err(e) = try_join_all(shorten).await {
                tracing::warn!(error = %e, "enqueue: cannot shorten the markers' lives");
            }
        }
        Ok(true)
    }

    /// Puts channels into their expiry index shards with score at most
    /// `expires_at` (`ZADD LT`: a lower bound of their earliest expiry), one
    /// command per shard.
    async fn index(&self, tags: &[&str], expires_at: Millis) -> Result<(), StoreError> {
        let mut shards: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for tag in tags {
            shards
                .entry(keys::expiring_shard(tag))
                .or_default()
                .push(tag);
        }
        try_join_all(shards.into_iter().map(|(shard, tags)| {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(shard).arg("LT");
            for tag in tags {
                cmd.arg(expires_at).arg(tag);
            }
            self.query::<Value>("index", cmd)
        }))
        .await?;
        Ok(())
    }

    /// `ack` on a cluster: the ack script on the channel's slot, then (on
    /// the first ack of a message with a sender) the receipt on the sender's
    /// slot. If the receipt cannot be appended, the ack still stands: it is
    /// logged and reported without a receipt.
    pub(crate) async fn ack_cluster(&self, ack: AckRequest) -> Result<Acked, StoreError> {
        let keys = ChannelKeys::new(&ack.channel);
        let mut inv = self.scripts.cluster.ack.prepare_invoke();
        for key in keys.all() {
            inv.key(key);
        }
        inv.arg(keys::device(&ack.device))
            .arg(ack.id.as_str())
            .arg(ack.now);
        let reply: Value = self.invoke("ack", inv).await?;
        let reply = codec::array(reply, "ack")?;
        let (seq, removed, sender) = match reply.as_slice() {
            [found] if codec::int(found, "ack")? == 0 => return Ok(Acked::default()),
            [_, seq, removed] => (codec::seq(seq, "ack")?, removed, None),
            [_, seq, removed, sender] => (
                codec::seq(seq, "ack")?,
                removed,
                Some(codec::channel(sender.clone(), "ack sender")?),
            ),
            _ => return Err(StoreError::corrupt("redis ack: bad reply")),
        };
        self.count_retained(&keys.tag, -codec::int(removed, "ack")?)
            .await;
        let Some(sender) = sender else {
            return Ok(Acked {
                seq: Some(seq),
                receipt: None,
            });
        };
        let receipt = match self.append_receipt(&ack, seq, &sender).await {
            Ok(rseq) => Some((sender, rseq)),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    channel = %ack.channel,
                    seq,
                    "ack recorded, but its receipt is lost"
                );
                None
            }
        };
        Ok(Acked {
            seq: Some(seq),
            receipt,
        })
    }

    /// Appends the receipt for entry `seq` of the acking channel to the
    /// sender's log, retrying a little (the receipt's marker makes a retry
    /// return the first append's seq); indexes the sender's channel before
    /// and after, as an enqueue does.
    async fn append_receipt(
        &self,
        ack: &AckRequest,
        seq: Seq,
        sender: &Channel,
    ) -> Result<Seq, StoreError> {
        let keys = ChannelKeys::new(sender);
        let marker = keys::receipt_marker(&keys, &ack.channel, seq);
        let tags = [keys.tag.as_str()];
        self.index(&tags, ack.receipt_expires_at).await?;
        let mut tries = 0;
        let rseq = loop {
            tries += 1;
            let mut inv = self.scripts.cluster.receipt.prepare_invoke();
            for key in keys.all() {
                inv.key(key);
            }
            inv.key(&marker)
                .arg(ack.receipt.as_ref())
                .arg(ack.receipt_expires_at)
                .arg(ATTEMPT_MS)
                .arg(keep_for(ack.now, ack.receipt_expires_at, ack.forget_after));
            let reply = self.invoke::<Value>("ack receipt", inv).await;
            match reply {
                Ok(reply) => {
                    let reply = codec::array(reply, "ack receipt")?;
                    let [rseq, added] = reply.as_slice() else {
                        return Err(StoreError::corrupt("redis ack receipt: bad reply"));
                    };
                    self.count_retained(&keys.tag, codec::int(added, "ack receipt")?)
                        .await;
                    break codec::seq(rseq, "ack receipt")?;
                }
                Err(e) if tries >= RECEIPT_TRIES => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(tries))).await,
            }
        };
        if let Err(e) = self.index(&tags, ack.receipt_expires_at).await {
            tracing::warn!(error = %e, "ack: cannot index the receipt's channel again");
        }
        Ok(rseq)
    }

    /// `health` on a cluster: every master of the slot map (as one master
    /// sees it) answers and says `cluster_state:ok`. (A plain `PING` to all
    /// masters would skip the masters the client has no connection to.)
    pub(crate) async fn health_cluster(&self, conn: ClusterConnection) -> Result<(), StoreError> {
        let mut c = conn.clone();
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let slots: Value = self
            .call("health", async move {
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                )
                .await
            })
            .await?;
        let mut masters = BTreeSet::new();
        for range in codec::array(slots, "health")? {
            let range = codec::array(range, "health")?;
            let master = range
                .get(2)
                .cloned()
                .map(|m| codec::array(m, "health"))
                .transpose()?
                .unwrap_or_default();
            let (Some(host), Some(port)) = (master.first(), master.get(1)) else {
                return Err(StoreError::corrupt("redis health: bad CLUSTER SLOTS"));
            };
            let host = String::from_utf8(codec::bytes(host.clone(), "health")?)
                .map_err(|_| StoreError::corrupt("redis health: bad host"))?;
            let port = u16::try_from(codec::int(port, "health")?)
                .map_err(|_| StoreError::corrupt("redis health: bad port"))?;
            masters.insert((host, port));
        }
        if masters.is_empty() {
            return Err(StoreError::backend("redis health: no slot is served"));
        }
        try_join_all(masters.into_iter().map(|(host, port)| {
            let mut c = conn.clone();
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("INFO");
            let addr = format!("{host}:{port}");
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
            async move {
                let info = self
                    .call("health", async move { c.route_command(cmd, routing).await })
                    .await?;
                let info = codec::bytes(info, "health")
                    .map(|b| String::from_utf8_lossy(&b).into_owned())?;
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    Ok(())
                } else {
                    Err(StoreError::backend(format!(
                        "redis health: {addr} says the cluster is down"
                    )))
                }
            }
        }))
        .await?;
        Ok(())
    }

    /// `expire` on a cluster: visits the due channels of every index shard.
    pub(crate) async fn expire_cluster(&self, now: Millis) -> Result<u64, StoreError> {
        let mut dropped = 0;
        for shard in keys::expiring_shards() {
            // As in standalone mode: each due channel once per sweep.
            let mut visited = HashSet::new();
            loop {
                let fresh = self.due_channels(&shard, now, &mut visited).await?;
                if fresh.is_empty() {
                    break;
                }
                for tag in fresh {
                    dropped += self.expire_channel_cluster(&shard, tag, now).await?;
                }
            }
        }
        Ok(dropped)
    }

    /// Drops one channel's expired entries, then sets its score in its index
    /// shard to its earliest expiry (or removes it when it holds nothing).
    /// An append that ran meanwhile may have been indexed before that and be
    /// overwritten, so the seq counter is read again: if it moved, the
    /// channel's earliest expiry goes back in (`ZADD LT`). An append after
    /// that re-read indexes itself after its append, so none is lost.
    async fn expire_channel_cluster(
        &self,
        shard: &str,
        tag: String,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let keys = ChannelKeys::from_tag(tag);
        let mut dropped = 0u64;
        let (earliest, counter) = loop {
            let mut inv = self.scripts.cluster.expire.prepare_invoke();
            for key in keys.all() {
                inv.key(key);
            }
            inv.arg(now).arg(EXPIRE_BATCH);
            let reply: Value = self.invoke("expire", inv).await?;
            let mut reply = codec::array(reply, "expire")?.into_iter();
            let (Some(n), Some(removed), Some(more)) = (reply.next(), reply.next(), reply.next())
            else {
                return Err(StoreError::corrupt("redis expire: bad reply"));
            };
            dropped += u64::try_from(codec::int(&n, "expire")?).unwrap_or(0);
            self.count_retained(&keys.tag, -codec::int(&removed, "expire")?)
                .await;
            if codec::int(&more, "expire")? != 0 {
                continue;
            }
            match (reply.next(), reply.next()) {
                (Some(earliest), Some(counter)) => {
                    break (
                        codec::bytes(earliest, "expire")?,
                        codec::bytes(counter, "expire")?,
                    );
                }
                _ => return Err(StoreError::corrupt("redis expire: bad reply")),
            }
        };

        let cmd = if earliest.is_empty() {
            let mut cmd = redis::cmd("ZREM");
            cmd.arg(shard).arg(&keys.tag);
            cmd
        } else {
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(shard).arg(&earliest).arg(&keys.tag);
            cmd
        };
        self.query::<Value>("expire", cmd).await?;

        let mut cmd = redis::cmd("GET");
        cmd.arg(&keys.seq);
        let now_counter: Option<Vec<u8>> = self.query("expire", cmd).await?;
        if now_counter.unwrap_or_else(|| b"0".to_vec()) != counter {
            // An entry appended meanwhile is in either expiry index.
            for index in [&keys.exp, &keys.unacked] {
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(index).arg(0).arg(0).arg("WITHSCORES");
                let first: Vec<Vec<u8>> = self.query("expire", cmd).await?;
                if let [_, score] = first.as_slice() {
                    let mut cmd = redis::cmd("ZADD");
                    cmd.arg(shard).arg("LT").arg(score).arg(&keys.tag);
                    self.query::<Value>("expire", cmd).await?;
                }
            }
        }
        Ok(dropped)
    }
}
