//! The ordered, batched path of standalone Redis: the counterpart of the
//! embedded store's group commit (protocol.md section 8).
//!
//! `start_enqueue` and `start_ack` put their request in one queue, in call
//! order, and return at once; a writer task takes everything that has
//! gathered (up to [`MAX_BATCH`]) and sends it as one call of
//! `lua/batch.lua`, which runs the requests in their order, on the
//! multiplexed connection. Redis runs a script atomically and a
//! connection's commands in the order they arrive, so the order of the queue
//! is the order of the effects: a connection that starts its messages one after the other keeps
//! their order although it does not wait for each round trip. One batch is
//! in flight at a time; the next gathers meanwhile, so batches grow with the
//! load, as group commits do.
//!
//! With `wait_replicas` (`--redis-wait-replicas`), each batch ends with one
//! `WAIT n timeout` on the writer's own connection (WAIT blocks the
//! connection it runs on): when fewer replicas confirmed the batch in time,
//! its enqueues fail with `unavailable` (they may be stored, and a resend is
//! then a duplicate, which gets its 100); its acks stand.
//!
//! A batch that fails whole (the connection dropped, the call timed out)
//! fails each of its requests with `unavailable`: some may have run, and a
//! resent message is then a duplicate (its dedupe record stands). When Redis
//! lost the script (a restart), the batch refused with `NOSCRIPT` is sent
//! again after the script is loaded: a batch either ran or was refused
//! whole, so the order of a connection's messages (and of its acks) holds.
//! One request that fails inside the script (corrupt data) fails alone.

use std::sync::Arc;
use std::time::Duration;

use bachata_core::{AckRequest, Acked, Enqueued, NewMessage, StoreError};
use redis::{ErrorKind, RedisResult, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::conn::{Conn, RedisStoreOptions};
use crate::keys::{self, EXPIRING, PENDING, PREFIX, RETAINED, UNDELIVERED};
use crate::lifetimes::{dedupe_px, keep_for};
use crate::scripts::Scripts;

/// Requests one batch carries at most.
pub(crate) const MAX_BATCH: usize = 512;

/// One request in the queue, with where its answer goes.
pub(crate) enum Op {
    Enqueue(NewMessage, oneshot::Sender<Result<Enqueued, StoreError>>),
    Ack(AckRequest, oneshot::Sender<Result<Acked, StoreError>>),
}

impl Op {
    /// How many keys this request passes to the batch script.
    fn key_count(&self) -> usize {
        match self {
            Op::Enqueue(msg, _) => 1 + 8 * msg.destinations.len(),
            Op::Ack(..) => 8,
        }
    }

    /// Roughly how many arguments and bytes this request adds to the
    /// batch script's call.
    fn size_hint(&self) -> (usize, usize) {
        match self {
            Op::Enqueue(msg, _) => {
                let n = msg.destinations.len();
                (15 + 9 * n, 256 + msg.payload.len() + 384 * n)
            }
            Op::Ack(ack, _) => (19, 512 + ack.receipt.len()),
        }
    }

    /// Appends this request's keys to the batch script's call.
    fn write_keys(&self, cmd: &mut redis::Cmd, buf: &mut Vec<u8>) {
        match self {
            Op::Enqueue(msg, _) => {
                cmd.arg(keys::dedupe(msg.sender.as_ref(), &msg.id));
                for dest in &msg.destinations {
                    keys::each_channel_key(dest, buf, |k| {
                        cmd.arg(k);
                    });
                }
            }
            Op::Ack(ack, _) => keys::each_channel_key(&ack.channel, buf, |k| {
                cmd.arg(k);
            }),
        }
    }

    /// Appends this request's part of the arguments: its kind, its number
    /// of keys and of arguments, then its arguments (`lua/batch.lua`).
    /// `notifies`: messages of this node went into the undelivered index,
    /// so a first ack takes its message out of it.
    fn write_args(&self, cmd: &mut redis::Cmd, notifies: bool) {
        match self {
            Op::Enqueue(msg, _) => enqueue_args(cmd, msg),
            Op::Ack(ack, _) => ack_args(cmd, ack, notifies),
        }
    }

    fn answer(self, reply: Result<Value, StoreError>) {
        match self {
            Op::Enqueue(msg, tx) => {
                let _ = tx.send(reply.and_then(|r| enqueue_outcome(r, msg)));
            }
            Op::Ack(_, tx) => {
                let _ = tx.send(reply.and_then(ack_outcome));
            }
        }
    }
}

/// The queue's sending end; the task ends when it is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    queue: mpsc::UnboundedSender<Op>,
}

/// How the writer talks to Redis.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Bound on one batch's round trip (the wait included).
    timeout: Duration,
    wait_replicas: usize,
    wait_timeout: Duration,
    /// Set once an enqueue asked for the undelivered webhook
    /// (`NewMessage::notify_at`): from then on acks name their channel's
    /// tag, for the script to take the acked message out of
    /// `bachata:undelivered`. Until then acks skip that call.
    notifies: bool,
}

impl Writer {
    /// Starts the writer task on `conn`, a connection of its own. Must run
    /// inside a tokio runtime.
    pub(crate) fn start(conn: Conn, scripts: Arc<Scripts>, options: &RedisStoreOptions) -> Writer {
        let settings = Settings {
            timeout: options.call_timeout + options.wait_timeout,
            wait_replicas: options.wait_replicas,
            wait_timeout: options.wait_timeout,
            notifies: false,
        };
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, scripts, settings, requests));
        Writer { queue }
    }

    /// Queues the op `make` builds around its reply channel; its place in
    /// the order is taken when this returns; the future is its answer.
    pub(crate) fn request<R: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<R, StoreError>>) -> Op,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<R, StoreError>> + Send>> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx));
        Box::pin(async move { rx.await.unwrap_or(Err(StoreError::Closed)) })
    }

    /// Queues `op`; its place in the order is taken when this returns. When
    /// the task is gone (the runtime is shutting down) the op is answered
    /// with an error at once.
    pub(crate) fn send(&self, op: Op) {
        if let Err(mpsc::error::SendError(op)) = self.queue.send(op) {
            op.answer(Err(StoreError::Closed));
        }
    }
}

async fn run(
    mut conn: Conn,
    scripts: Arc<Scripts>,
    mut settings: Settings,
    mut requests: mpsc::UnboundedReceiver<Op>,
) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut ops, MAX_BATCH).await > 0 {
        settings.notifies = settings.notifies
            || ops
                .iter()
                .any(|op| matches!(op, Op::Enqueue(msg, _) if msg.notify_at.is_some()));
        let replies = send_batch(&mut conn, &scripts, &ops, settings).await;
        for (op, reply) in ops.drain(..).zip(replies) {
            op.answer(reply);
        }
    }
}

/// Sends `ops` as one batch; one reply per op, in order.
///
/// A batch that fails whole (its connection broke, say: the connection
/// reconnects meanwhile) is sent again, in its order, after a short pause,
/// while the batch is younger than its timeout. That is safe for both kinds
/// of request: an enqueue that ran the first time is a duplicate the second
/// (its sender gets its 100 all the same), and an ack that ran finds
/// nothing to ack (its 300 reaches the sender at the next read of its log).
/// Acks especially need it, since nobody sends a 200 again. What still
/// fails is answered with the error: 400 `unavailable` for an enqueue,
/// which its sender may resend.
async fn send_batch(
    conn: &mut Conn,
    scripts: &Scripts,
    ops: &[Op],
    settings: Settings,
) -> Vec<Result<Value, StoreError>> {
    let started = tokio::time::Instant::now();
    let mut pauses = RETRY_PAUSES.iter();
    let failed = loop {
        let error = match attempt(conn, scripts, ops, settings).await {
            Ok(replies) => {
                return replies
                    .into_iter()
                    .zip(ops)
                    .map(|(r, op)| answer_of(r, op))
                    .collect();
            }
            Err(e) => e,
        };
        match pauses.next() {
            Some(pause) if started.elapsed() + *pause < settings.timeout => {
                tokio::time::sleep(*pause).await;
            }
            _ => break error,
        }
    };
    ops.iter().map(|_| Err(failed.clone_for_each())).collect()
}

/// The pauses before a failed batch is sent again: the first reconnect is
/// immediate, a restarting Redis takes longer.
const RETRY_PAUSES: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(1000),
];

/// One try at a batch: the pipeline, and the requests Redis refused for
/// want of their script sent again after loading it.
async fn attempt(
    conn: &mut Conn,
    scripts: &Scripts,
    ops: &[Op],
    settings: Settings,
) -> Result<Vec<Result<Value, RedisOrStore>>, StoreError> {
    let mut replies = pipeline(conn, scripts, ops.iter(), settings).await?;
    let refused: Vec<usize> = (0..ops.len())
        .filter(|i| matches!(&replies[*i], Err(e) if is_noscript(e)))
        .collect();
    if !refused.is_empty() {
        // Redis lost its scripts (a restart): load them, then send the
        // refused requests again, in their order.
        let retried = match scripts.load_batched(conn, settings.timeout).await {
            Ok(()) => pipeline(conn, scripts, refused.iter().map(|i| &ops[*i]), settings).await,
            Err(e) => Err(e),
        };
        match retried {
            Ok(again) => {
                for (i, reply) in refused.iter().zip(again) {
                    replies[*i] = reply;
                }
            }
            Err(e) => {
                for i in &refused {
                    replies[*i] = Err(RedisOrStore::Store(e.clone_for_each()));
                }
            }
        }
    }
    Ok(replies)
}

/// What one request's reply means to its op: with `wait_replicas`, an
/// unconfirmed enqueue fails (no 100 for it), while an ack and its 300
/// stand.
fn answer_of(reply: Result<Value, RedisOrStore>, op: &Op) -> Result<Value, StoreError> {
    match (reply, op) {
        (Err(RedisOrStore::Unconfirmed(why, _)), Op::Enqueue(..)) => Err(StoreError::backend(why)),
        (Err(RedisOrStore::Unconfirmed(_, reply)), Op::Ack(..)) => Ok(reply),
        (r, _) => r.map_err(|e| e.into_store("batch")),
    }
}

/// A per-request failure: the request's own error, the batch's, a batch
/// whose writes too few replicas confirmed, or a script Redis lost.
enum RedisOrStore {
    Store(StoreError),
    /// Too few replicas confirmed the batch; the request's own reply.
    Unconfirmed(String, Value),
    /// Redis lost the script (a restart): load it and send again.
    NoScript,
}

impl RedisOrStore {
    fn into_store(self, what: &str) -> StoreError {
        match self {
            RedisOrStore::Store(e) => e,
            RedisOrStore::Unconfirmed(why, _) => StoreError::backend(why),
            RedisOrStore::NoScript => StoreError::backend(format!("redis {what}: no script")),
        }
    }
}

fn is_noscript(e: &RedisOrStore) -> bool {
    matches!(e, RedisOrStore::NoScript)
}

/// Cloning a [`StoreError`] for every request of a failed batch (its
/// source is not `Clone`: the copies keep its text).
trait CloneForEach {
    fn clone_for_each(&self) -> StoreError;
}

impl CloneForEach for StoreError {
    fn clone_for_each(&self) -> StoreError {
        match self {
            StoreError::Corrupt { .. } => StoreError::corrupt(self.to_string()),
            StoreError::Closed => StoreError::Closed,
            StoreError::Backend { .. } => StoreError::backend(self.to_string()),
        }
    }
}

/// One call of the batch script with every op (and the `WAIT`, with
/// `wait_replicas`), within the batch timeout; one reply per op.
async fn pipeline<'a>(
    conn: &mut Conn,
    scripts: &Scripts,
    ops: impl Iterator<Item = &'a Op>,
    settings: Settings,
) -> Result<Vec<Result<Value, RedisOrStore>>, StoreError> {
    let timeout = settings.timeout;
    // EVALSHA written directly (a `ScriptInvocation` keeps each key and
    // argument in a vector of its own, then copies them all).
    let ops: Vec<&Op> = ops.collect();
    let count = ops.len();
    // Sized up front: growing it copies everything written so far, which
    // showed in the server's profile.
    let (args, bytes) = ops.iter().fold((5, 64), |(args, bytes), op| {
        let (a, b) = op.size_hint();
        (args + a, bytes + b)
    });
    let mut cmd = redis::Cmd::with_capacity(args, bytes);
    cmd.arg("EVALSHA")
        .arg(scripts.batch.get_hash())
        .arg(4 + ops.iter().map(|op| op.key_count()).sum::<usize>())
        .arg(EXPIRING)
        .arg(RETAINED)
        .arg(PENDING)
        .arg(UNDELIVERED);
    let mut buf = Vec::with_capacity(128);
    for op in &ops {
        op.write_keys(&mut cmd, &mut buf);
    }
    for op in &ops {
        op.write_args(&mut cmd, settings.notifies);
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    pipe.add_command(cmd);
    let waits = settings.wait_replicas > 0;
    if waits {
        let ms = u64::try_from(settings.wait_timeout.as_millis()).unwrap_or(u64::MAX);
        pipe.cmd("WAIT").arg(settings.wait_replicas).arg(ms.max(1));
    }
    let sent = pipe.query_async::<Vec<RedisResult<Value>>>(conn);
    let mut replies = match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(replies)) => replies.into_iter(),
        Ok(Err(e)) => return Err(crate::codec::map_error("batch", e)),
        Err(_) => {
            return Err(StoreError::backend(format!(
                "redis batch: timed out after {timeout:?}"
            )));
        }
    };
    let batch = replies.next();
    let unconfirmed = if waits {
        confirmed(replies.next(), settings).err()
    } else {
        None
    };
    let each: Vec<Result<Value, RedisOrStore>> = match batch {
        Some(Ok(Value::Array(items))) if items.len() == count => {
            items.into_iter().map(own_reply).collect()
        }
        Some(Ok(_)) | None => {
            let bad = StoreError::corrupt("redis batch: bad reply");
            (0..count)
                .map(|_| Err(RedisOrStore::Store(bad.clone_for_each())))
                .collect()
        }
        // Redis refused the call whole: every op was refused.
        Some(Err(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            (0..count).map(|_| Err(RedisOrStore::NoScript)).collect()
        }
        Some(Err(e)) => {
            let refused = crate::codec::map_error("batch", e);
            (0..count)
                .map(|_| Err(RedisOrStore::Store(refused.clone_for_each())))
                .collect()
        }
    };
    Ok(each
        .into_iter()
        .map(|r| match (&unconfirmed, r) {
            // A request that failed failed whatever the wait.
            (_, Err(e)) => Err(e),
            (Some(why), Ok(v)) => Err(RedisOrStore::Unconfirmed(why.clone(), v)),
            (None, Ok(v)) => Ok(v),
        })
        .collect())
}

/// One op's part of the batch script's reply: its own reply, or
/// `{'err', message}` when it failed.
fn own_reply(item: Value) -> Result<Value, RedisOrStore> {
    let Value::Array(parts) = &item else {
        return Ok(item);
    };
    match parts.as_slice() {
        [Value::BulkString(status), message] if status.as_slice() == b"err" => {
            let message = match message {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            };
            Err(RedisOrStore::Store(
                match message.strip_prefix("BACHATA_CORRUPT ") {
                    Some(what) => StoreError::corrupt(format!("redis: {what}")),
                    None => StoreError::backend(format!("redis batch: {message}")),
                },
            ))
        }
        _ => Ok(item),
    }
}

/// Whether `WAIT`'s reply says enough replicas confirmed the batch.
fn confirmed(reply: Option<RedisResult<Value>>, settings: Settings) -> Result<(), String> {
    let n = settings.wait_replicas;
    match reply {
        Some(Ok(Value::Int(got))) if usize::try_from(got).is_ok_and(|g| g >= n) => Ok(()),
        Some(Ok(Value::Int(got))) => Err(format!(
            "redis: {got} of {n} replicas confirmed the write within {:?}",
            settings.wait_timeout
        )),
        Some(Ok(other)) => Err(format!("redis WAIT: unexpected reply {other:?}")),
        Some(Err(e)) => Err(format!("redis WAIT: {e}")),
        None => Err("redis WAIT: no reply".to_owned()),
    }
}

/// The arguments of the enqueue of `msg` in a batch call (see
/// `lua/batch.lua`).
fn enqueue_args(cmd: &mut redis::Cmd, msg: &NewMessage) {
    let n = msg.destinations.len();
    cmd.arg("e")
        .arg(1 + 8 * n)
        .arg(11 + n)
        .arg(msg.now)
        .arg(msg.expires_at)
        .arg(msg.dedupe_until)
        .arg(dedupe_px(msg))
        .arg(msg.queue_limit)
        .arg(msg.sender.as_ref().map_or("", |s| s.as_str()))
        .arg(msg.id.as_str())
        .arg(msg.payload.as_ref())
        .arg(msg.retained_limit)
        .arg(keep_for(msg.now, msg.expires_at, msg.forget_after))
        .arg(msg.notify_at.unwrap_or(0));
    let mut tag = Vec::with_capacity(32);
    for dest in &msg.destinations {
        tag.clear();
        keys::push_hex(&mut tag, dest.as_str().as_bytes());
        cmd.arg(&tag[..]);
    }
}

/// What the batch script answered for the enqueue of `msg`.
pub(crate) fn enqueue_outcome(reply: Value, msg: NewMessage) -> Result<Enqueued, StoreError> {
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
                return Err(StoreError::corrupt("redis enqueue: wrong number of seqs"));
            }
            Ok(Enqueued::Stored(
                msg.destinations.into_iter().zip(seqs).collect(),
            ))
        }
        Some(b"dup") => Ok(Enqueued::Duplicate),
        Some(b"store_full") => Ok(Enqueued::StoreFull),
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
                .ok_or_else(|| StoreError::corrupt("redis enqueue: bad full index"))
        }
        _ => Err(StoreError::corrupt("redis enqueue: bad reply")),
    }
}

/// The arguments of `ack` in a batch call (see `lua/batch.lua`).
fn ack_args(cmd: &mut redis::Cmd, ack: &AckRequest, notifies: bool) {
    cmd.arg("a")
        .arg(8)
        .arg(8)
        .arg(keys::device(&ack.device))
        .arg(ack.id.as_str())
        .arg(ack.now)
        .arg(ack.receipt.as_ref())
        .arg(ack.receipt_expires_at)
        .arg(PREFIX)
        .arg(keep_for(ack.now, ack.receipt_expires_at, ack.forget_after));
    let mut tag = Vec::new();
    if notifies {
        keys::push_hex(&mut tag, ack.channel.as_str().as_bytes());
    }
    cmd.arg(&tag[..]);
}

/// What the batch script answered for an ack.
pub(crate) fn ack_outcome(reply: Value) -> Result<Acked, StoreError> {
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
        _ => Err(StoreError::corrupt("redis ack: bad reply")),
    }
}
