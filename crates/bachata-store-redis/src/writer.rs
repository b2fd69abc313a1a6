//! The ordered, batched path of standalone Redis: the counterpart of the
//! embedded store's group commit (protocol.md section 8).
//!
//! `start_enqueue` and `start_ack` put their request in one queue, in call
//! order, and return at once; a writer task takes everything that has
//! gathered (up to [`MAX_BATCH`]) and sends it as one pipeline of script
//! calls on the multiplexed connection. Redis runs a connection's commands
//! in the order they arrive, so the order of the queue is the order of the
//! effects: a connection that starts its messages one after the other keeps
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
//! lost the scripts (a restart), the requests refused with `NOSCRIPT` are
//! sent again, in their order, after the scripts are loaded; requests of
//! one script either all ran or all were refused, so the order of a
//! connection's messages (and of its acks) holds.

use std::sync::Arc;
use std::time::Duration;

use bachata_core::{AckRequest, Acked, Enqueued, NewMessage, StoreError};
use redis::{ErrorKind, RedisResult, ServerErrorKind, Value};
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::conn::{Conn, RedisStoreOptions};
use crate::keys::{self, ChannelKeys, EXPIRING, PENDING, PREFIX, RETAINED};
use crate::lifetimes::{dedupe_px, keep_for};
use crate::scripts::Scripts;

/// Requests one pipeline carries at most.
pub(crate) const MAX_BATCH: usize = 512;

/// One request in the queue, with where its answer goes.
pub(crate) enum Op {
    Enqueue(NewMessage, oneshot::Sender<Result<Enqueued, StoreError>>),
    Ack(AckRequest, oneshot::Sender<Result<Acked, StoreError>>),
}

impl Op {
    fn invocation<'a>(&self, scripts: &'a Scripts) -> redis::ScriptInvocation<'a> {
        match self {
            Op::Enqueue(msg, _) => enqueue_invocation(scripts, msg),
            Op::Ack(ack, _) => ack_invocation(scripts, ack),
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
}

impl Writer {
    /// Starts the writer task on `conn`, a connection of its own. Must run
    /// inside a tokio runtime.
    pub(crate) fn start(conn: Conn, scripts: Arc<Scripts>, options: &RedisStoreOptions) -> Writer {
        let settings = Settings {
            timeout: options.call_timeout + options.wait_timeout,
            wait_replicas: options.wait_replicas,
            wait_timeout: options.wait_timeout,
        };
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, scripts, settings, requests));
        Writer { queue }
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
    settings: Settings,
    mut requests: mpsc::UnboundedReceiver<Op>,
) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let replies = send_batch(&mut conn, &scripts, &ops, settings).await;
        for (op, reply) in ops.drain(..).zip(replies) {
            op.answer(reply);
        }
    }
}

/// Sends `ops` as one pipeline; one reply per op, in order.
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

/// A per-request failure: Redis's own error for that request, the
/// batch's, or a batch whose writes too few replicas confirmed.
enum RedisOrStore {
    Redis(redis::RedisError),
    Store(StoreError),
    /// Too few replicas confirmed the batch; the request's own reply.
    Unconfirmed(String, Value),
}

impl RedisOrStore {
    fn into_store(self, what: &str) -> StoreError {
        match self {
            RedisOrStore::Redis(e) => crate::codec::map_error(what, e),
            RedisOrStore::Store(e) => e,
            RedisOrStore::Unconfirmed(why, _) => StoreError::backend(why),
        }
    }
}

fn is_noscript(e: &RedisOrStore) -> bool {
    matches!(e, RedisOrStore::Redis(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
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

/// One pipeline of the ops' script calls (and the `WAIT`, with
/// `wait_replicas`), within the batch timeout.
async fn pipeline<'a>(
    conn: &mut Conn,
    scripts: &Scripts,
    ops: impl Iterator<Item = &'a Op>,
    settings: Settings,
) -> Result<Vec<Result<Value, RedisOrStore>>, StoreError> {
    let timeout = settings.timeout;
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for op in ops {
        pipe.invoke_script(&op.invocation(scripts));
    }
    let waits = settings.wait_replicas > 0;
    if waits {
        let ms = u64::try_from(settings.wait_timeout.as_millis()).unwrap_or(u64::MAX);
        pipe.cmd("WAIT").arg(settings.wait_replicas).arg(ms.max(1));
    }
    let sent = pipe.query_async::<Vec<RedisResult<Value>>>(conn);
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(mut replies)) => {
            let unconfirmed = if waits {
                confirmed(replies.pop(), settings).err()
            } else {
                None
            };
            Ok(replies
                .into_iter()
                .map(|r| match (&unconfirmed, r) {
                    // A request Redis refused is refused whatever the wait.
                    (_, Err(e)) => Err(RedisOrStore::Redis(e)),
                    (Some(why), Ok(v)) => Err(RedisOrStore::Unconfirmed(why.clone(), v)),
                    (None, Ok(v)) => Ok(v),
                })
                .collect())
        }
        Ok(Err(e)) => Err(crate::codec::map_error("batch", e)),
        Err(_) => Err(StoreError::backend(format!(
            "redis batch: timed out after {timeout:?}"
        ))),
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

/// The `enqueue.lua` call for `msg` (standalone Redis).
pub(crate) fn enqueue_invocation<'a>(
    scripts: &'a Scripts,
    msg: &NewMessage,
) -> redis::ScriptInvocation<'a> {
    let dests: Vec<ChannelKeys> = msg.destinations.iter().map(ChannelKeys::new).collect();
    let mut inv = scripts.enqueue.prepare_invoke();
    inv.key(keys::dedupe(msg.sender.as_ref(), &msg.id))
        .key(EXPIRING)
        .key(RETAINED)
        .key(PENDING);
    for dest in &dests {
        for key in dest.all() {
            inv.key(key);
        }
    }
    inv.arg(msg.now)
        .arg(msg.expires_at)
        .arg(msg.dedupe_until)
        .arg(dedupe_px(msg))
        .arg(msg.queue_limit)
        .arg(msg.sender.as_ref().map_or("", |s| s.as_str()))
        .arg(msg.id.as_str())
        .arg(msg.payload.as_ref())
        .arg(msg.retained_limit)
        .arg(keep_for(msg.now, msg.expires_at, msg.forget_after));
    for dest in &dests {
        inv.arg(&dest.tag);
    }
    inv
}

/// What `enqueue.lua` answered for `msg`.
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

/// The `ack.lua` call for `ack` (standalone Redis).
pub(crate) fn ack_invocation<'a>(
    scripts: &'a Scripts,
    ack: &AckRequest,
) -> redis::ScriptInvocation<'a> {
    let keys = ChannelKeys::new(&ack.channel);
    let mut inv = scripts.ack.prepare_invoke();
    for key in keys.all() {
        inv.key(key);
    }
    inv.key(EXPIRING)
        .key(RETAINED)
        .key(PENDING)
        .arg(keys::device(&ack.device))
        .arg(ack.id.as_str())
        .arg(ack.now)
        .arg(ack.receipt.as_ref())
        .arg(ack.receipt_expires_at)
        .arg(PREFIX)
        .arg(keep_for(ack.now, ack.receipt_expires_at, ack.forget_after));
    inv
}

/// What `ack.lua` answered.
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
