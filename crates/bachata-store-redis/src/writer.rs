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
use crate::conn::Conn;
use crate::keys::{self, ChannelKeys, EXPIRING, PREFIX, RETAINED};
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

impl Writer {
    /// Starts the writer task on `conn`. Must run inside a tokio runtime.
    pub(crate) fn start(conn: Conn, scripts: Arc<Scripts>, timeout: Duration) -> Writer {
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(conn, scripts, timeout, requests));
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
    timeout: Duration,
    mut requests: mpsc::UnboundedReceiver<Op>,
) {
    let mut ops = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut ops, MAX_BATCH).await > 0 {
        let replies = send_batch(&mut conn, &scripts, &ops, timeout).await;
        for (op, reply) in ops.drain(..).zip(replies) {
            op.answer(reply);
        }
    }
}

/// Sends `ops` as one pipeline; one reply per op, in order.
async fn send_batch(
    conn: &mut Conn,
    scripts: &Scripts,
    ops: &[Op],
    timeout: Duration,
) -> Vec<Result<Value, StoreError>> {
    let mut replies = match pipeline(conn, scripts, ops.iter(), timeout).await {
        Ok(replies) => replies,
        Err(e) => return ops.iter().map(|_| Err(e.clone_for_each())).collect(),
    };
    let refused: Vec<usize> = (0..ops.len())
        .filter(|i| matches!(&replies[*i], Err(e) if is_noscript(e)))
        .collect();
    if !refused.is_empty() {
        // Redis lost its scripts (a restart): load them, then send the
        // refused requests again, in their order.
        let retried = match scripts.load_batched(conn, timeout).await {
            Ok(()) => pipeline(conn, scripts, refused.iter().map(|i| &ops[*i]), timeout).await,
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
    replies
        .into_iter()
        .map(|r| r.map_err(|e| e.into_store("batch")))
        .collect()
}

/// A per-request failure: Redis's own error for that request, or the
/// batch's.
enum RedisOrStore {
    Redis(redis::RedisError),
    Store(StoreError),
}

impl RedisOrStore {
    fn into_store(self, what: &str) -> StoreError {
        match self {
            RedisOrStore::Redis(e) => crate::codec::map_error(what, e),
            RedisOrStore::Store(e) => e,
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

/// One pipeline of the ops' script calls, within `timeout`.
async fn pipeline<'a>(
    conn: &mut Conn,
    scripts: &Scripts,
    ops: impl Iterator<Item = &'a Op>,
    timeout: Duration,
) -> Result<Vec<Result<Value, RedisOrStore>>, StoreError> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for op in ops {
        pipe.invoke_script(&op.invocation(scripts));
    }
    let sent = pipe.query_async::<Vec<RedisResult<Value>>>(conn);
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(replies)) => Ok(replies
            .into_iter()
            .map(|r| r.map_err(RedisOrStore::Redis))
            .collect()),
        Ok(Err(e)) => Err(crate::codec::map_error("batch", e)),
        Err(_) => Err(StoreError::backend(format!(
            "redis batch: timed out after {timeout:?}"
        ))),
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
        .key(RETAINED);
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
